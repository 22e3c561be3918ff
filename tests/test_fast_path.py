"""The per-call fast path of compiled energies (issue 18, item 5).

A call looks up a record of its ``(n, dtype, is_cpu)`` made after every check
passed, checks that each parameter is the same tensor at the same ``data_ptr()``
(arrays: of the same shape) and the first on the same device, and (only when
``_derive`` gives values) compares their content bit for bit. These tests
check that nothing the checked path saw goes unseen by the fast one: writes to parameters by any route, a new
dtype, moved or reshaped parameters, and every error, with the same type and
message as on a fresh energy. Expected values are written out by hand.
"""

import pytest
import torch

from torchebm.core import GaussianEnergy, HarmonicEnergy, LennardJonesEnergy
from torchebm.errors import DeviceError, MemoryLimitError, ShapeError
from torchebm.symbolic import from_expression

T = torch.float64


class DerivedHarmonic(HarmonicEnergy):
    """HarmonicEnergy whose gradient reads its factor from the derived values, as
    generated code does once parameter-only arithmetic moves into ``_derive``."""

    calls = 0

    def _derive(self):
        DerivedHarmonic.calls += 1
        return {**super()._derive(), "2*(0.5*k)": 2 * (0.5 * self.k)}

    def _gradient(self, x, lay, der):
        return der["2*(0.5*k)"] * x


class EmptyDerive(HarmonicEnergy):
    """A generated class whose ``_derive`` exists but has nothing to compute."""

    def _derive(self):
        return {}

    def _gradient(self, x, lay, der):
        return self.k.to(x.dtype) * x


class NoneDerive(EmptyDerive):
    def _derive(self):
        return None


def _spy_checked(monkeypatch, energy):
    calls = []
    checked = type(energy)._inputs_checked

    def spy(self, x):
        calls.append(tuple(x.shape))
        return checked(self, x)

    monkeypatch.setattr(type(energy), "_inputs_checked", spy)
    return calls


def test_a_second_call_skips_the_checks(monkeypatch):
    energy = DerivedHarmonic(k=2.0)
    calls = _spy_checked(monkeypatch, energy)
    x = torch.tensor([[1.0, -3.0]], dtype=T)
    for _ in range(3):
        torch.testing.assert_close(energy.gradient(x), torch.tensor([[2.0, -6.0]], dtype=T))
    assert calls == [(1, 2)]
    energy.gradient(torch.ones(5, 2, dtype=T))            # same n, dtype, device: same record
    assert calls == [(1, 2)]
    energy.gradient(torch.ones(5, 3, dtype=T))            # a new n is checked once
    energy.gradient(torch.ones(5, 2))                     # a new dtype too
    assert calls == [(1, 2), (5, 3), (5, 2)]


@pytest.mark.parametrize("write", ["data_fill", "numpy", "assign_data", "copy", "setattr",
                                   "load_state_dict", "assign_data_float32"])
def test_scalar_parameter_writes_are_seen(write):
    energy = DerivedHarmonic(k=2.0)
    x = torch.tensor([[1.0, -3.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[2.0, -6.0]], dtype=T))
    if write == "data_fill":
        energy.k.data.fill_(5.0)
    elif write == "numpy":
        energy.k.numpy()[()] = 5.0
    elif write == "assign_data":
        energy.k.data = torch.tensor(5.0, dtype=T)
    elif write == "copy":
        with torch.no_grad():
            energy.k.copy_(torch.tensor(5.0))
    elif write == "setattr":
        energy.k = 5.0
    elif write == "load_state_dict":
        energy.load_state_dict({"k": torch.tensor(5.0, dtype=T)})
    else:
        energy.k.data = torch.tensor(5.0)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[5.0, -15.0]], dtype=T))
    torch.testing.assert_close(energy.gradient(x.float()),
                               torch.tensor([[5.0, -15.0]]))


def test_derived_values_are_computed_once_per_content_and_dtype():
    energy = DerivedHarmonic(k=0.1)
    x64 = torch.tensor([[1.0, 2.0]], dtype=T)
    x32 = x64.float()
    DerivedHarmonic.calls = 0
    for _ in range(3):
        g64 = energy.gradient(x64)
        g32 = energy.gradient(x32)
    assert DerivedHarmonic.calls == 2                    # one per dtype, then cached
    assert g64.dtype == T and g32.dtype == torch.float32
    # 0.1 in float64 times x, exact to float64 rounding: the float64 call did not
    # reuse a float32 cast (that would be off by ~1e-9)
    assert g64[0, 0].item() == 0.1 and g64[0, 1].item() == 0.2
    assert g32[0, 0].item() == torch.tensor(0.1, dtype=torch.float32).item()
    for dtype in (T, torch.float32):
        der = energy._inputs(x64.to(dtype))[2]
        assert der["2*(0.5*k)"].dtype == dtype
    energy.k.data.mul_(3)
    torch.testing.assert_close(energy.gradient(x64), torch.tensor([[0.3, 0.6]], dtype=T),
                               rtol=1e-15, atol=0)
    assert DerivedHarmonic.calls == 3


@pytest.mark.parametrize("cls", [EmptyDerive, NoneDerive])
def test_derive_with_nothing_to_give(cls):
    energy = cls(k=3.0)
    x = torch.tensor([[1.0, 2.0]], dtype=T)
    for _ in range(2):
        torch.testing.assert_close(energy.gradient(x), torch.tensor([[3.0, 6.0]], dtype=T))
        assert energy._inputs(x)[2] == {}
    energy.k.data.fill_(-1.0)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[-1.0, -2.0]], dtype=T))


def _gauss_gradient(mean, cov, x):
    return torch.linalg.solve(cov, (x - mean).T).T


@pytest.mark.parametrize("write", ["mul", "numpy", "assign_data", "to_float32"])
def test_array_parameter_writes_are_seen(write):
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=T)
    mean = torch.tensor([1.0, -1.0], dtype=T)
    energy = GaussianEnergy(mean.clone(), cov.clone())
    x = torch.tensor([[0.5, 2.0], [-1.0, 0.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x), _gauss_gradient(mean, cov, x))
    if write == "mul":
        energy.cov.data.mul_(2)
        cov = 2 * cov
    elif write == "numpy":
        energy.mean.numpy()[:] = [0.0, 3.0]
        mean = torch.tensor([0.0, 3.0], dtype=T)
    elif write == "assign_data":
        energy.cov.data = 3 * cov
        cov = 3 * cov
    else:
        energy.to(torch.float32)
        assert energy.cov.dtype == torch.float32
    torch.testing.assert_close(energy.gradient(x), _gauss_gradient(mean, cov, x))


def test_a_parameter_reshaped_through_data_is_seen():
    energy = GaussianEnergy(torch.zeros(2, dtype=T), torch.eye(2, dtype=T))
    x2 = torch.tensor([[1.0, 2.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x2), x2)
    energy.mean.data = torch.tensor([1.0, 0.0, -1.0], dtype=T)
    energy.cov.data = 2 * torch.eye(3, dtype=T)
    x3 = torch.tensor([[1.0, 2.0, 3.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x3), torch.tensor([[0.0, 1.0, 2.0]], dtype=T))
    with pytest.raises(ShapeError, match="x has length 2 but mean has length 3"):
        energy.gradient(x2)


def _error(fn):
    try:
        fn()
    except Exception as exc:   # noqa: BLE001 -- the error itself is what is compared
        return type(exc), str(exc)
    return None


BAD_INPUTS = {
    "integer tensor": lambda: torch.ones(2, 2, dtype=torch.int64),
    "0-d tensor": lambda: torch.tensor(1.0),
    "n = 0": lambda: torch.ones(3, 0),
    "a list": lambda: [[1.0, 2.0]],
    "sparse": lambda: torch.eye(2).to_sparse(),
    "meta device": lambda: torch.ones(2, 2, device="meta"),
}


@pytest.mark.parametrize("what", sorted(BAD_INPUTS))
@pytest.mark.parametrize("method", ["forward", "gradient", "energy_and_gradient",
                                    "hessian_diagonal"])
def test_the_fast_path_raises_what_a_fresh_energy_raises(what, method):
    fresh = _error(lambda: getattr(GaussianEnergy(torch.zeros(2), torch.eye(2)), method)(
        BAD_INPUTS[what]()))
    assert fresh is not None and fresh[0] in (TypeError, ShapeError, DeviceError)
    warm = GaussianEnergy(torch.zeros(2), torch.eye(2))
    for dtype in (torch.float32, torch.float64):          # records for both dtypes exist
        getattr(warm, method)(torch.ones(2, 2, dtype=dtype))
    assert _error(lambda: getattr(warm, method)(BAD_INPUTS[what]())) == fresh


def test_wrong_sizes_after_a_good_call():
    lj = LennardJonesEnergy(n_particles=3)
    lj(torch.randn(2, 9, dtype=T))
    with pytest.raises(ShapeError, match=r"takes x of shape \[\.\.\., 9\], got \[\.\.\., 8\]"):
        lj(torch.randn(2, 8, dtype=T))
    gauss = GaussianEnergy(torch.zeros(2), torch.eye(2))
    gauss(torch.ones(1, 2))
    with pytest.raises(ShapeError, match="x has length 3 but mean has length 2"):
        gauss.gradient(torch.ones(1, 3))


def test_a_parameter_moved_to_another_device_is_a_device_error():
    energy = HarmonicEnergy(k=2.0)
    energy.gradient(torch.ones(1, 2))
    energy.register_buffer("k", torch.tensor(2.0, dtype=T, device="meta"))  # no hook runs
    with pytest.raises(DeviceError, match="parameter k of HarmonicEnergy is on meta"):
        energy.gradient(torch.ones(1, 2))
    energy.to("meta")
    assert energy.gradient(torch.ones(1, 2, device="meta")).device.type == "meta"


def test_the_memory_guard_runs_on_every_call():
    energy = from_expression("sum((x[i] - x[j])**2 for i in range(n) for j in range(n))")
    x = torch.tensor([[1.0, 2.0, 4.0]], dtype=T)
    # sum over i, j of (x_i - x_j)^2 = 2 * (3 * sum(x^2) - sum(x)^2) = 2 * (63 - 49)
    assert energy(x).item() == 28.0
    energy.max_level_elements = 8                        # 1 sample x 9 pairs > 8
    with pytest.raises(MemoryLimitError, match="max_level_elements = 8"):
        energy(x)
    energy.max_level_elements = 9
    assert energy(x).item() == 28.0
    with pytest.raises(MemoryLimitError, match="batch of 2"):
        energy(x.expand(2, 3))


def test_grad_mode_is_restored_after_a_call_and_after_an_error():
    energy = HarmonicEnergy()
    assert torch.is_grad_enabled()
    assert not energy.gradient(torch.ones(1, 2, requires_grad=True)).requires_grad
    assert torch.is_grad_enabled()
    with pytest.raises(ShapeError):
        energy.gradient(torch.ones(1, 0))
    assert torch.is_grad_enabled()
    with torch.no_grad():
        energy.energy_and_gradient(torch.ones(1, 2))
        assert not torch.is_grad_enabled()


def test_trainable_parameters_get_a_graph_and_no_stale_cache():
    energy = DerivedHarmonic(k=2.0, trainable=True)
    x = torch.tensor([[1.0, -3.0]], dtype=T)
    g = energy.gradient(x, create_graph=True)
    (dk,) = torch.autograd.grad(g.sum(), energy.k)
    assert dk.item() == -2.0                             # d/dk of k * (1 - 3)
    with torch.no_grad():
        energy.k.add_(1.0)                               # an optimiser step
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[3.0, -9.0]], dtype=T))
    g = energy.gradient(x, create_graph=True)
    torch.testing.assert_close(g, torch.tensor([[3.0, -9.0]], dtype=T))
    assert g.requires_grad


def test_a_one_dimensional_sample_after_a_batch():
    energy = DerivedHarmonic(k=2.0)
    energy.gradient(torch.ones(4, 3, dtype=T))
    g = energy.gradient(torch.tensor([1.0, 2.0, 3.0], dtype=T))
    torch.testing.assert_close(g, torch.tensor([[2.0, 4.0, 6.0]], dtype=T))
    assert energy(torch.tensor([1.0, 2.0, 3.0], dtype=T)).shape == (1,)


@pytest.mark.slow
def test_torch_compile_traces_the_call_and_its_derived_values():
    """Dynamo traces the fast path and ``_derive`` into one graph that takes ``k`` as an
    input (the ``aot_eager`` backend: the tracing is the property, not Inductor's code)."""
    energy = DerivedHarmonic(k=3.0)
    x = torch.tensor([[1.0, -2.0]], dtype=T)
    energy.gradient(x)                                   # a record exists before tracing
    fn = torch.compile(lambda z: energy.gradient(z), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(x), torch.tensor([[3.0, -6.0]], dtype=T))
    energy.k.data.fill_(2.0)                             # the graph reads k, not a stale copy
    torch.testing.assert_close(fn(x), torch.tensor([[2.0, -4.0]], dtype=T))
    assert torch.is_grad_enabled()


# -- found by the attack pass ------------------------------------------------------------------

def test_second_order_after_a_first_order_call_sees_the_new_derived_values():
    """The deferred second-order compile replaces ``_derive`` (more parameter-only
    values); the cached values of the first-order call must not be served to it."""
    E = from_expression("sum(a*x**2 + b*sin(x))", a=1.3, b=0.7)
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=T)
    E(x), E.gradient(x), E.energy_and_gradient(x)
    want = (2 * 1.3 - 0.7 * torch.sin(x)).sum(-1)
    torch.testing.assert_close(E.laplacian(x), want)
    torch.testing.assert_close(E.hessian_diagonal(x), 2 * 1.3 - 0.7 * torch.sin(x))
    other = from_expression("sum(a*x**2 + b*sin(x))", a=2.0, b=-1.0)   # same class
    torch.testing.assert_close(other.laplacian(x), (4.0 + torch.sin(x)).sum(-1))


def test_torch_func_differentiates_the_closed_form_derivatives():
    """jacrev/grad over E.gradient, E.laplacian (default flags) give the Hessian and the
    third derivative, not zeros (torch.func respects an inner no_grad)."""
    from torch.func import grad, jacrev, vmap
    E = from_expression("sum(a*x**2 + b*sin(x))", a=1.3, b=0.7)
    x = torch.tensor([0.3, -1.2], dtype=T)
    hess = jacrev(lambda z: E.gradient(z)[0])(x)
    torch.testing.assert_close(hess, torch.diag(2 * 1.3 - 0.7 * torch.sin(x)))
    third = grad(lambda z: E.laplacian(z)[0])(x)
    torch.testing.assert_close(third, -0.7 * torch.cos(x))
    hvp = jacrev(lambda z: E.hessian_vector_product(z, torch.ones_like(z))[0])(x)
    torch.testing.assert_close(hvp, torch.diag(-0.7 * torch.cos(x)))
    batch = torch.tensor([[0.3, -1.2], [1.0, 0.5]], dtype=T)
    per_sample = vmap(jacrev(lambda z: E.gradient(z)[0]))(batch)
    torch.testing.assert_close(per_sample[1], torch.diag(2 * 1.3 - 0.7 * torch.sin(batch[1])))
    assert not E.gradient(x.requires_grad_(True)).requires_grad   # outside: still detached


@pytest.mark.parametrize("start", [0.0, -0.0, float("nan")])
def test_derived_cache_compares_bits(start):
    """A parameter flipped in place from 0.0 to -0.0 (or NaN to a number) changes what
    atan2 gives; float equality would not see the flip."""
    E = from_expression("sum(x**2) + atan2(t, -1.0)", t=start)
    x = torch.zeros(1, 2, dtype=T)
    E(x)
    for value in (-0.0, 0.0, 1.0, float("nan"), -0.0):
        E.t.data.fill_(value)
        want = torch.atan2(torch.tensor(value, dtype=T), torch.tensor(-1.0, dtype=T))
        torch.testing.assert_close(E(x)[0], want, equal_nan=True)


# -- how the fast path sees a parameter change (data_ptr, table identity, bytes) ---------------

@pytest.mark.parametrize("write", ["buffers_dict", "data_same_storage_offset", "data_repeated",
                                   "numpy_negative_zero", "requires_grad_on_buffer"])
def test_more_parameter_write_routes_are_seen(write):
    """Writes that bypass the module: a direct ``_buffers`` entry, ``.data`` set to a view
    of new storage, ``.data`` set again and again (old storages freed and reallocated), a
    sign flip of zero through NumPy, and a buffer that starts requiring grad."""
    energy = DerivedHarmonic(k=2.0)
    x = torch.tensor([[1.0, -3.0]], dtype=T)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[2.0, -6.0]], dtype=T))
    if write == "buffers_dict":
        energy._buffers["k"] = torch.tensor(5.0, dtype=T)
    elif write == "data_same_storage_offset":
        energy.k.data = torch.tensor([7.0, 5.0], dtype=T)[1]      # a view into new storage
    elif write == "data_repeated":
        for value in (3.0, 4.0, 6.0, 5.0):
            energy.k.data = torch.tensor(value, dtype=T)
            torch.testing.assert_close(energy.gradient(x), value * x)
    elif write == "numpy_negative_zero":
        energy.k.numpy()[()] = -0.0
        g = energy.gradient(x)
        assert torch.equal(torch.signbit(g), torch.tensor([[True, False]]))  # -0*1, -0*-3
        energy.k.numpy()[()] = 5.0
    else:
        energy.k.requires_grad_(True)
        g = energy.gradient(x, create_graph=True)
        (dk,) = torch.autograd.grad(g.sum(), energy.k)
        assert dk.item() == -2.0                           # d/dk of k * (1 - 3)
        assert not energy.gradient(x).requires_grad        # default: detached
        with torch.no_grad():
            energy.k.fill_(5.0)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[5.0, -15.0]], dtype=T))


def test_functional_call_and_back():
    """``torch.func.functional_call`` swaps the parameter for the call; the values are the
    swapped-in ones, and after it the module's own again."""
    energy = DerivedHarmonic(k=2.0)
    x = torch.tensor([[1.0, -3.0]], dtype=T)
    energy.gradient(x)
    other = torch.func.functional_call(energy, {"k": torch.tensor(-4.0, dtype=T)}, (x,))
    torch.testing.assert_close(other, torch.tensor([-4.0 * 0.5 * 10.0], dtype=T))
    swapped = torch.func.functional_call(energy, {"k": torch.tensor(-4.0, dtype=T)}, (x,),
                                         {}, strict=False)
    torch.testing.assert_close(swapped, other)
    torch.testing.assert_close(energy.gradient(x), torch.tensor([[2.0, -6.0]], dtype=T))
    torch.testing.assert_close(energy(x), torch.tensor([10.0], dtype=T))


def test_gradient_under_no_grad_and_inside_vmap_under_no_grad():
    """With grad mode already off the call does not touch it; vmap still sees x."""
    energy = DerivedHarmonic(k=2.0)
    batch = torch.tensor([[1.0, -3.0], [0.5, 2.0]], dtype=T)
    with torch.no_grad():
        torch.testing.assert_close(energy.gradient(batch), 2.0 * batch)
        per_sample = torch.func.vmap(lambda z: energy.gradient(z)[0])(batch)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(per_sample, 2.0 * batch)
