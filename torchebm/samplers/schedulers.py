"""Schedules for a sampler's step size and noise scale, one value per sampler step.

The names, constructor arguments and values follow TorchEBM's schedulers, so
code written for TorchEBM (``LangevinDynamics(E, step_size=LinearScheduler(...))``)
runs unchanged. A sampler reads ``get_value()`` before each step and then calls
``step()``; ``sample(reset_schedulers=True)`` (the default) restarts every
schedule at step 0.

Values after ``k`` calls of ``step()`` (``v0`` is ``start_value``):

* ``ConstantScheduler``: ``v0``;
* ``ExponentialDecayScheduler``: ``max(min_value, v0 * decay_rate**k)``;
* ``LinearScheduler``: ``v0 + (end_value - v0) * k / n_steps``, then ``end_value``;
* ``CosineScheduler``: ``end + (v0 - end) * (1 + cos(pi k / n_steps)) / 2``, then ``end``
  (Loshchilov & Hutter, SGDR, 2017, without restarts);
* ``MultiStepScheduler``: ``v0 * gamma**(number of milestones <= k)``;
* ``WarmupScheduler``: linear from ``warmup_init_factor * main.start_value`` to
  ``main.start_value`` over ``warmup_steps``, then the main schedule from its step 1.
"""

from __future__ import annotations

import abc
import math

from ..errors import ArgumentError


class BaseScheduler(abc.ABC):
    """A value per step: ``get_value()``, ``step()`` (advance, return the new value), ``reset()``.

    Attributes:
        start_value: the value at step 0.
        current_value: the value at ``step_count``.
        step_count: steps taken since construction or the last ``reset()``.

    Raises:
        TypeError: ``start_value`` that is not a number.
        ValueError: ``start_value`` that is not finite.
    """

    def __init__(self, start_value: float):
        if isinstance(start_value, bool) or not isinstance(start_value, (int, float)):
            raise TypeError(f"{type(self).__name__} start_value must be a float or int, not "
                            f"{type(start_value).__name__}")
        if not math.isfinite(start_value):
            raise ArgumentError(f"{type(self).__name__} start_value must be finite, got {start_value}")
        self.start_value = float(start_value)
        self.current_value = self.start_value
        self.step_count = 0

    @abc.abstractmethod
    def _compute_value(self) -> float:
        """The value at ``self.step_count``."""

    def step(self) -> float:
        self.step_count += 1
        self.current_value = float(self._compute_value())
        return self.current_value

    def reset(self) -> None:
        self.step_count = 0
        self.current_value = self.start_value

    def get_value(self) -> float:
        return self.current_value

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self):
        return f"{type(self).__name__}(value={self.current_value:g}, step={self.step_count})"


class ConstantScheduler(BaseScheduler):
    """The same value at every step."""

    def _compute_value(self):
        return self.start_value


class ExponentialDecayScheduler(BaseScheduler):
    """``max(min_value, start_value * decay_rate**k)``; ``decay_rate`` in (0, 1], ``min_value >= 0``."""

    def __init__(self, start_value: float, decay_rate: float, min_value: float = 0.0):
        super().__init__(start_value)
        if not 0.0 < decay_rate <= 1.0:
            raise ArgumentError(f"decay_rate must be in (0, 1], got {decay_rate}")
        if not min_value >= 0:
            raise ArgumentError(f"min_value must be non-negative, got {min_value}")
        self.decay_rate, self.min_value = float(decay_rate), float(min_value)

    def _compute_value(self):
        return max(self.min_value, self.start_value * self.decay_rate ** self.step_count)


class LinearScheduler(BaseScheduler):
    """Linear from ``start_value`` to ``end_value`` over ``n_steps`` steps, then constant."""

    def __init__(self, start_value: float, end_value: float, n_steps: int):
        super().__init__(start_value)
        if not n_steps > 0:
            raise ArgumentError(f"n_steps must be positive, got {n_steps}")
        self.end_value, self.n_steps = float(end_value), int(n_steps)

    def _compute_value(self):
        if self.step_count >= self.n_steps:
            return self.end_value
        return self.start_value + (self.end_value - self.start_value) * self.step_count / self.n_steps


class CosineScheduler(BaseScheduler):
    """Half a cosine from ``start_value`` to ``end_value`` over ``n_steps`` steps, then constant."""

    def __init__(self, start_value: float, end_value: float, n_steps: int):
        super().__init__(start_value)
        if not n_steps > 0:
            raise ArgumentError(f"n_steps must be a positive integer, got {n_steps}")
        self.end_value, self.n_steps = float(end_value), int(n_steps)

    def _compute_value(self):
        if self.step_count >= self.n_steps:
            return self.end_value
        w = 0.5 * (1.0 + math.cos(math.pi * self.step_count / self.n_steps))
        return self.end_value + (self.start_value - self.end_value) * w


class MultiStepScheduler(BaseScheduler):
    """``start_value * gamma**m`` where ``m`` milestones (positive, increasing) are reached."""

    def __init__(self, start_value: float, milestones, gamma: float = 0.1):
        super().__init__(start_value)
        milestones = list(milestones)
        if not all(m > 0 for m in milestones):
            raise ArgumentError("Milestone steps must be positive integers.")
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ArgumentError("Milestones must be strictly increasing.")
        self.milestones, self.gamma = milestones, float(gamma)

    def _compute_value(self):
        return self.start_value * self.gamma ** sum(self.step_count >= m for m in self.milestones)


class WarmupScheduler(BaseScheduler):
    """Linear warm-up to ``main_scheduler.start_value``, then ``main_scheduler``.

    Args:
        main_scheduler: the schedule after warm-up (reset here).
        warmup_steps: steps of the linear ramp (> 0).
        warmup_init_factor: the ramp starts at ``warmup_init_factor * main.start_value``.
    """

    def __init__(self, main_scheduler: BaseScheduler, warmup_steps: int,
                 warmup_init_factor: float = 0.01):
        if not isinstance(main_scheduler, BaseScheduler):
            raise TypeError(f"main_scheduler must be a BaseScheduler, not "
                            f"{type(main_scheduler).__name__}")
        if not warmup_steps > 0:
            raise ArgumentError(f"warmup_steps must be positive, got {warmup_steps}")
        super().__init__(main_scheduler.start_value * warmup_init_factor)
        self.main_scheduler = main_scheduler
        self.warmup_steps, self.warmup_init_factor = int(warmup_steps), float(warmup_init_factor)
        self.target_value = main_scheduler.start_value
        main_scheduler.reset()

    def _compute_value(self):
        if self.step_count <= self.warmup_steps:
            return self.start_value + (self.target_value - self.start_value) * \
                self.step_count / self.warmup_steps
        return self.main_scheduler.get_value()

    def step(self):
        self.step_count += 1
        if self.step_count > self.warmup_steps:
            self.main_scheduler.step()
        self.current_value = float(self._compute_value())
        return self.current_value

    def reset(self):
        super().reset()
        self.main_scheduler.reset()


__all__ = ["BaseScheduler", "ConstantScheduler", "CosineScheduler", "ExponentialDecayScheduler",
           "LinearScheduler", "MultiStepScheduler", "WarmupScheduler"]
