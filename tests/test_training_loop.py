"""torchebm.datasets (toy 2-D sets), torchebm.training.fit and the mixture example."""

import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import torch

from torchebm import datasets
from torchebm.losses import ContrastiveDivergence, DenoisingScoreMatching
from torchebm.samplers import LangevinDynamics
from torchebm.symbolic import from_expression
from torchebm.training import History, fit

ALL = [datasets.EightGaussiansDataset, datasets.TwoMoonsDataset, datasets.SwissRollDataset,
       datasets.CircleDataset, datasets.CheckerboardDataset, datasets.PinwheelDataset]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_dataset_protocol_and_seed(cls):
    a, b, c = cls(n_samples=500, seed=3), cls(n_samples=500, seed=3), cls(n_samples=500, seed=4)
    assert a.get_data().shape == (500, 2) and len(a) == 500
    assert a.get_data().dtype == torch.float32 and torch.isfinite(a.get_data()).all()
    assert torch.equal(a.get_data(), b.get_data())
    assert not torch.equal(a.get_data(), c.get_data())
    assert torch.equal(a[7], a.get_data()[7])
    assert cls(n_samples=10, seed=0, dtype=torch.float64).get_data().dtype == torch.float64
    with pytest.raises(ValueError, match="n_samples"):
        cls(n_samples=0)


def test_dataset_geometry():
    # each set against its definition: distances to the generating curve are noise-sized
    x = datasets.EightGaussiansDataset(4000, std=0.02, scale=2.0, seed=0).get_data().double()
    centres = torch.tensor([[2 * math.cos(k * math.pi / 4), 2 * math.sin(k * math.pi / 4)]
                            for k in range(8)], dtype=torch.float64)
    nearest = torch.cdist(x, centres).min(1)
    assert nearest.values.max() < 0.15 and len(nearest.indices.unique()) == 8
    counts = torch.bincount(nearest.indices, minlength=8).double()
    assert (counts / 4000 - 1 / 8).abs().max() < 0.03

    r = datasets.CircleDataset(4000, noise=0.0, radius=1.5, seed=0).get_data().double().norm(dim=1)
    assert torch.allclose(r, torch.full_like(r, 1.5), atol=1e-6)

    m = datasets.TwoMoonsDataset(4000, noise=0.0, seed=0).get_data().double()
    upper = (m.norm(dim=1) - 1).abs() < 1e-6
    lower = ((m - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-6
    assert bool((upper | lower).all()) and abs(int(upper.sum()) - 2000) <= 5

    cb = datasets.CheckerboardDataset(4000, range_limit=4.0, noise=0.0, seed=0).get_data()
    cell = torch.floor((cb.double() + 4) / 2).long()
    assert bool(((cell.sum(1) % 2) == 0).all()) and cb.abs().max() <= 4

    s = datasets.SwissRollDataset(4000, noise=0.0, arclength=3.0, seed=0).get_data().double()
    t = s.norm(dim=1) * 3 * math.pi          # |t (cos t, sin t)| = t
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    assert torch.allclose(torch.atan2(s[:, 1], s[:, 0]),
                          torch.atan2(torch.sin(t), torch.cos(t)), atol=1e-4)

    p = datasets.PinwheelDataset(3000, n_classes=5, noise=0.0, angular_scale=0.0,
                                 seed=0).get_data().double()
    # without noise and width, each point sits on its blade's ray at angle 2 pi c / 5
    angle = torch.atan2(p[:, 1], p[:, 0]) % (2 * math.pi)
    blade = torch.round(angle / (2 * math.pi / 5)) % 5
    assert torch.allclose(angle, (blade * 2 * math.pi / 5) % (2 * math.pi), atol=1e-6) or \
        bool(((angle - blade * 2 * math.pi / 5).abs() % (2 * math.pi) < 1e-6).all())


def test_fit_recovers_a_gaussian_mean_and_records_history():
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(1024, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor(
        [1.0, -1.0], dtype=torch.float64)
    model = from_expression("0.5*sum((x - mu)**2)*exp(-2*log_s) + n*log_s",
                            mu=torch.zeros(2), log_s=0.0, trainable=True)
    seen = []
    hist = fit(model, data, DenoisingScoreMatching(model, noise_scale=0.2), epochs=40,
               batch_size=128, lr=0.05, seed=0, callbacks=lambda info: seen.append(info.step))
    assert isinstance(hist, History) and len(hist.losses) == 40 * 8 == len(seen)
    assert len(hist.epoch_losses) == 40 and seen == list(range(1, 321))
    assert torch.allclose(model.mu.detach(), data.mean(0), atol=0.05)
    # denoising score matching fits the data smoothed by the noise: s^2 = 0.5^2 + 0.2^2
    assert abs(float(model.log_s.detach().exp()) - math.sqrt(0.25 + 0.04)) < 0.03


def test_fit_reproducible_stops_early_and_takes_tuple_losses():
    data = datasets.TwoMoonsDataset(256, seed=0).get_data().double()
    runs = []
    for _ in range(2):
        model = from_expression("0.5*sum((x - mu)**2)", mu=torch.zeros(2), trainable=True)
        cd = ContrastiveDivergence(model, LangevinDynamics(model, step_size=0.05, seed=0),
                                   k_steps=3)
        h = fit(model, data, cd, epochs=50, batch_size=64, seed=2,
                callbacks=lambda info: info.step == 7)
        assert h.stopped_early and len(h.losses) == 7
        runs.append(h.losses)
    assert runs[0] == runs[1]


def test_fit_takes_datasets():
    from torch.utils.data import TensorDataset
    x = torch.randn(64, 2, dtype=torch.float64)
    for data in (TensorDataset(x), TensorDataset(x, torch.zeros(64)),
                 datasets.CircleDataset(64, seed=0, dtype=torch.float64)):
        model = from_expression("a*sum(x**2)", a=1.0, trainable=True)
        h = fit(model, data, lambda b: model(b).mean(), epochs=1, batch_size=16, lr=0.1)
        assert len(h.losses) == 4 and float(model.a.detach()) < 1.0   # descends the mean energy


def test_fit_errors():
    model = from_expression("sum(x**2)")
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(model, torch.randn(8, 2), lambda b: model(b).mean())
    trainable = from_expression("a*sum(x**2)", a=1.0, trainable=True)
    with pytest.raises(ValueError, match="scalar tensor"):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b))
    with pytest.raises(ValueError, match="batch_size"):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b).mean(), batch_size=0)
    with pytest.raises(ValueError, match="not finite|is nan|is inf"):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b).mean() * float("nan"))
    # a loss built on another model (the user rebuilt it): named before any step
    rebuilt = from_expression("a*sum(x**2)", a=1.0, trainable=True)
    with pytest.raises(ValueError, match="another .* share no parameter"):
        fit(rebuilt, torch.randn(8, 2), DenoisingScoreMatching(trainable, noise_scale=0.1))
    before = rebuilt.a.detach().clone()
    with pytest.raises(ValueError, match="does not depend on the energy's parameters"):
        fit(rebuilt, torch.randn(8, 2), lambda b: trainable(b).mean())
    assert torch.equal(rebuilt.a.detach(), before)
    other = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="optimiser holds none"):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b).mean(),
            optimizer=torch.optim.SGD([other], lr=0.1))
    with pytest.raises(TypeError, match="LBFGS needs a closure"):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b).mean(),
            optimizer=torch.optim.LBFGS)
    with pytest.raises(ValueError, match="seed= or generator="):
        fit(trainable, torch.randn(8, 2), lambda b: trainable(b).mean(), seed=1,
            generator=torch.Generator())


@pytest.mark.slow
def test_mixture_example_recovers_the_means(tmp_path):
    path = Path(__file__).parent.parent / "examples" / "fit_mixture.py"
    spec = importlib.util.spec_from_file_location("fit_mixture", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--out", str(tmp_path / "fit.png")]) == 0   # 0: every centre within 0.1
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "fit.png").stat().st_size > 10000


def test_fit_stops_when_every_cd_loss_is_the_nonfinite_fallback():
    """A sampler that diverges at every update makes contrastive divergence return its
    fallback constant (zero gradient) at every step: the loss looks finite, but nothing
    is learnt, so fit raises after the epoch (a new user's lr/step-size typo trained a
    dead model silently). One diverged step among good ones is still skipped."""
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    model = from_expression("0.5*sum((x - mu)**2)", mu=torch.zeros(2), trainable=True)
    wild = LangevinDynamics(model, step_size=1e3, generator=torch.Generator().manual_seed(1))
    cd = ContrastiveDivergence(model, wild, k_steps=200, energy_reg_weight=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the fallback's own warning, each step
        with pytest.raises(ValueError, match="every loss of epoch 0 was not finite.*"
                                             "lower its step size"):
            fit(model, data, cd, epochs=3, batch_size=16, seed=0, progress=False)
    assert cd.last_loss_replaced
    calm = LangevinDynamics(model, step_size=0.01, generator=torch.Generator().manual_seed(1))
    cd = ContrastiveDivergence(model, calm, k_steps=2, energy_reg_weight=0.0)
    fit(model, data, cd, epochs=1, batch_size=16, seed=0, progress=False)
    assert cd.last_loss_replaced is False


def test_fit_skips_the_optimiser_step_of_a_replaced_loss():
    """A step whose loss was contrastive divergence's non-finite fallback changes no
    parameter, even with Adam's momentum (a zero gradient would still move it)."""
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    model = from_expression("0.5*sum((x - mu)**2)", mu=torch.zeros(2), trainable=True)

    class FlakySampler:            # diverges on every second update
        energy = model

        def __init__(self):
            self.calls = 0

        def sample(self, x, n_steps):
            self.calls += 1
            return x + 0.1 if self.calls % 2 else torch.full_like(x, float("inf"))
    cd = ContrastiveDivergence(model, FlakySampler(), k_steps=1, energy_reg_weight=0.0)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(model, data, cd, epochs=1, batch_size=16, seed=0, progress=False,
            optimizer=torch.optim.Adam(model.parameters(), lr=0.1),
            callbacks=lambda info: seen.append((cd.last_loss_replaced,
                                                model.mu.detach().clone())))
    before = torch.zeros(2, dtype=model.mu.dtype)
    for replaced, after in seen:
        assert torch.equal(after, before) == replaced     # moved exactly when not replaced
        before = after
