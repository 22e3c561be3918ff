"""MCMC samplers on energies: Langevin dynamics, MALA, Hamiltonian Monte Carlo; their schedules."""

from .diagnostics import effective_sample_size as effective_sample_size
from .diagnostics import split_rhat as split_rhat
from .mcmc import MALA as MALA
from .mcmc import BaseSampler as BaseSampler
from .mcmc import Diagnostics as Diagnostics
from .mcmc import HamiltonianMonteCarlo as HamiltonianMonteCarlo
from .mcmc import LangevinDynamics as LangevinDynamics
from .schedulers import BaseScheduler as BaseScheduler
from .schedulers import ConstantScheduler as ConstantScheduler
from .schedulers import CosineScheduler as CosineScheduler
from .schedulers import ExponentialDecayScheduler as ExponentialDecayScheduler
from .schedulers import LinearScheduler as LinearScheduler
from .schedulers import MultiStepScheduler as MultiStepScheduler
from .schedulers import WarmupScheduler as WarmupScheduler

__all__ = ["BaseSampler", "BaseScheduler", "ConstantScheduler", "CosineScheduler", "Diagnostics",
           "ExponentialDecayScheduler", "HamiltonianMonteCarlo", "LangevinDynamics",
           "LinearScheduler", "MALA", "MultiStepScheduler", "WarmupScheduler",
           "effective_sample_size", "split_rhat"]
