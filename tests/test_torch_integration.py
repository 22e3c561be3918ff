"""The torch toolbox on generated modules: compile, torch.func, create_graph, devices, threads."""

import math
import threading

import pytest
import torch
from torch.func import grad, hessian, vmap

from torchebm.core import AckleyEnergy, GaussianEnergy, RosenbrockEnergy
from torchebm.errors import DeviceError
from torchebm.symbolic import from_expression
from torchebm.symbolic import api

from .cases import COMPILED


@pytest.mark.slow
@pytest.mark.parametrize("formula,params", COMPILED, ids=[f[:20] for f, _ in COMPILED])
def test_fused_mode_compiles_without_graph_breaks(formula, params):
    """Every construct traces as one graph (``fullgraph=True``) in every fused method,
    and the compiled methods equal the eager ones. Through the ``aot_eager`` backend:
    it runs the same Dynamo and AOTAutograd tracing as Inductor, so a graph break fails
    here too, without seconds of C++ compilation per method. Inductor's kernels are
    checked against eager below (second order), in test_compiled_direct.py (double
    well, Gaussian, Rosenbrock), test_parameter_gradient_fused.py and
    test_sampler_fused.py."""
    x = torch.randn(16, 4, dtype=torch.float64)
    eager = from_expression(formula, params=params)
    fused = from_expression(formula, params=params).compile(backend="aot_eager")
    assert fused._direct is None                # every call goes through torch.compile
    torch.testing.assert_close(fused(x), eager(x))
    torch.testing.assert_close(fused.gradient(x), eager.gradient(x))
    e, g = fused.energy_and_gradient(x)
    torch.testing.assert_close(e, eager(x))
    torch.testing.assert_close(g, eager.gradient(x))
    v = torch.randn_like(x)
    torch.testing.assert_close(fused.hessian_vector_product(x, v),
                               eager.hessian_vector_product(x, v))
    torch.testing.assert_close(fused.laplacian(x), eager.laplacian(x))
    g, lap = fused.gradient_and_laplacian(x)
    torch.testing.assert_close(g, eager.gradient(x))
    torch.testing.assert_close(lap, eager.laplacian(x))


@pytest.mark.slow
def test_inductor_second_order_equals_eager():
    """``compile=True`` (Inductor's C++, called directly) on a formula with shifted
    slices: the Hessian-vector product and the gradient with the Laplacian equal the
    eager closed forms."""
    formula = COMPILED[0][0]
    eager = from_expression(formula, a=1.0, b=100.0)
    fused = from_expression(formula, a=1.0, b=100.0, compile=True)
    assert fused._direct is not None
    x = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(fused.hessian_vector_product(x, v),
                               eager.hessian_vector_product(x, v))
    g, lap = fused.gradient_and_laplacian(x)
    torch.testing.assert_close(g, eager.gradient(x))
    torch.testing.assert_close(lap, eager.laplacian(x))


@pytest.mark.slow
def test_torch_compile_of_the_module():
    energy = RosenbrockEnergy()
    x = torch.randn(8, 5)
    torch.testing.assert_close(torch.compile(energy, fullgraph=True)(x), energy(x))


def test_matrix_energies_trace_as_one_graph_and_export():
    """inverse() and logdet() take LU while a user's torch.compile or torch.export traces
    the module (the Cholesky route's symmetry test and int(info) would break the graph;
    a new user found fullgraph=True failing on GaussianEnergy). aot_eager: the same
    Dynamo tracing without C++ compilation."""
    gaussian = GaussianEnergy(torch.tensor([0.5, -1.0, 0.0]),
                              torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 1.5]]))
    formula = from_expression("0.5*(x - mu) @ inverse(S) @ (x - mu) + 0.5*logdet(S)",
                              mu=torch.zeros(3), S=torch.eye(3) * 2)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5))
    for energy in (gaussian, formula):
        traced = torch.compile(energy, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(traced(x), energy(x))
    exported = torch.export.export(gaussian, (x,))
    torch.testing.assert_close(exported.module()(x), gaussian(x))


def test_torch_func_over_forward():
    energy = RosenbrockEnergy()
    x = torch.randn(6, 3, dtype=torch.float64)
    per_sample = vmap(grad(lambda t: energy(t).squeeze(0)))(x)
    torch.testing.assert_close(per_sample, energy.gradient(x))
    h = hessian(lambda t: energy(t).squeeze(0))(x[0])
    assert h.shape == (3, 3)
    torch.testing.assert_close(h, h.T)


def test_create_graph_gives_second_derivatives_and_parameter_gradients():
    energy = from_expression("sum(a*x**2 + sin(b*x))", a=1.5, b=0.7, trainable=True)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    g = energy.gradient(x, create_graph=True)
    assert g.requires_grad
    (gx,) = torch.autograd.grad(g.sum(), x, retain_graph=True)
    a, b = 1.5, 0.7
    torch.testing.assert_close(gx, 2 * a - b**2 * torch.sin(b * x).detach())   # d2E/dx2
    (ga,) = torch.autograd.grad(g.sum(), energy.a)
    torch.testing.assert_close(ga, (2 * x).sum().detach())
    assert not energy.gradient(x).requires_grad                  # detached by default


def test_parameter_on_another_device_is_a_clear_error():
    energy = AckleyEnergy()
    x = torch.randn(2, 3, device="meta")
    with pytest.raises(DeviceError, match="energy.to"):
        energy(x)


def test_to_and_double_move_buffers():
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2)).to(torch.float32)
    assert energy.cov.dtype == torch.float32
    assert energy.double().cov.dtype == torch.float64


def test_compile_cache_is_thread_safe_and_bounded(monkeypatch):
    from collections import OrderedDict
    monkeypatch.setattr(api, "_cache", OrderedDict())   # the shared classes stay cached
    classes = []

    def work():
        classes.append(type(from_expression("sum(x**3 - 2*x)")))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(classes)) == 1
    monkeypatch.setattr(api, "CACHE_SIZE", 4)
    for k in range(10):
        from_expression(f"sum(x**2) + {k}*sum(x)")
    assert len(api._cache) <= 4


def test_parameter_only_values_recomputed_when_a_parameter_changes():
    energy = GaussianEnergy(torch.zeros(2), torch.eye(2))
    x = torch.ones(1, 2, dtype=torch.float64)
    assert float(energy(x)) == pytest.approx(1.0)
    with torch.no_grad():
        energy.cov.mul_(2.0)                        # in place: the cached inverse is stale
    assert float(energy(x)) == pytest.approx(0.5)


def test_torch_func_hessian_twice_on_a_fresh_energy():
    # layouts made inside a torch.func transform are wrapped for it: never cached
    energy = from_expression("sum((x[i] - x[j])**2 for i in range(n) for j in range(i + 1, n))")
    x = torch.randn(3, dtype=torch.float64)

    def f(z):
        return energy(z).sum()

    first = hessian(f)(x)
    second = hessian(f)(x)
    want = 2 * (3 * torch.eye(3, dtype=torch.float64) - 1)
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(second, want)
    gauss = GaussianEnergy(torch.zeros(3), 2 * torch.eye(3))
    for _ in range(2):
        torch.testing.assert_close(hessian(lambda z: gauss(z).sum())(x),
                                   0.5 * torch.eye(3, dtype=torch.float64))


def test_vmap_over_a_matrix_parameter_ensembles_models():
    """Model ensembling: ``vmap`` over stacked covariances through ``functional_call``.
    Reference by hand: S = s I gives E = |x|^2 / (2 s) + n log s, and dE/dS = -S^-1 x x^T
    S^-1 / 2 + S^-1 (summed over the batch), here -x x^T / (2 s^2) + I / s."""
    from torch.func import functional_call
    T = torch.float64
    energy = from_expression("0.5*x @ inverse(S) @ x + logdet(S)", S=torch.eye(3, dtype=T))
    x = torch.randn(5, 3, dtype=T, generator=torch.Generator().manual_seed(8))
    scales = torch.tensor([1.0, 3.0], dtype=T)
    stacked = scales[:, None, None] * torch.eye(3, dtype=T)
    out = vmap(lambda S: functional_call(energy, {"S": S}, (x,)))(stacked)
    want = (x**2).sum(-1) / (2 * scales[:, None]) + 3 * torch.log(scales)[:, None]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    dS = vmap(grad(lambda S: functional_call(energy, {"S": S}, (x,)).sum()))(stacked)
    outer = torch.einsum("bi,bj->ij", x, x)
    want = -outer / (2 * scales[:, None, None] ** 2) + 5 * torch.eye(3, dtype=T) / scales[:, None, None]
    torch.testing.assert_close(dS, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_matrix_parameters(dtype):
    """inverse/logdet/det of a float16 or bfloat16 matrix run in float32 (no CPU kernels
    exist in half precision) and are cast back: values within the dtype's rounding of the
    float64 formula 0.5 x^T S^-1 x + logdet(S) + det(S), S = diag(2, 4, 0.5)."""
    T = torch.float64
    S = torch.diag(torch.tensor([2.0, 4.0, 0.5], dtype=T))
    energy = from_expression("0.5*x @ inverse(S) @ x + logdet(S) + det(S)", S=S,
                             trainable=True).to(dtype)
    x = torch.tensor([[0.5, -1.0, 0.25], [1.0, 2.0, -0.5]], dtype=T)
    d = torch.tensor([2.0, 4.0, 0.5], dtype=T)
    want = 0.5 * (x**2 / d).sum(-1) + torch.log(d).sum() + d.prod()
    tol = dict(rtol=2e-2, atol=2e-2)
    e = energy(x.to(dtype))
    assert e.dtype == dtype
    torch.testing.assert_close(e.double(), want, **tol)
    torch.testing.assert_close(energy.gradient(x.to(dtype)).double(), x / d, **tol)
    ps = energy.parameter_gradient_sum(x.to(dtype))["S"]
    S64 = S.clone().requires_grad_(True)
    ref = (0.5 * torch.einsum("bi,ij,bj->b", x, torch.linalg.inv(S64), x)
           + torch.logdet(S64) + torch.det(S64)).sum()
    (want,) = torch.autograd.grad(ref, S64)
    assert ps.dtype == dtype
    torch.testing.assert_close(ps.double(), want, rtol=2e-2, atol=5e-2)


def test_parametrized_parameters_are_read_at_every_call():
    """torch.nn.utils.parametrize moves a parameter to ``parametrizations.<name>.original``
    and provides the parametrized value as an attribute: every call reads that value,
    and gradients reach the original. References: the same formulas in plain torch."""
    import torch.nn as nn
    from torch.nn.utils import parametrize
    T = torch.float64

    class Exp(nn.Module):
        def forward(self, v):
            return v.exp()

    class SPD(nn.Module):
        def forward(self, L):
            return L @ L.mT + torch.eye(L.shape[-1], dtype=L.dtype)

    x = torch.randn(4, 3, dtype=T, generator=torch.Generator().manual_seed(2))
    energy = from_expression("a*sum(x**2)", a=0.5, trainable=True)
    parametrize.register_parametrization(energy, "a", Exp())
    torch.testing.assert_close(energy(x), math.exp(0.5) * (x**2).sum(-1))
    torch.testing.assert_close(energy.gradient(x), 2 * math.exp(0.5) * x)
    with torch.no_grad():
        energy.parametrizations.a.original.fill_(0.0)         # a = exp(0) = 1, seen
    torch.testing.assert_close(energy(x), (x**2).sum(-1))

    L = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.2, 0.0], [-0.3, 0.2, 0.8]], dtype=T)
    gauss = from_expression("0.5*x @ inverse(S) @ x + 0.5*logdet(S)", S=torch.eye(3, dtype=T),
                            trainable=True)
    parametrize.register_parametrization(gauss, "S", SPD())
    with torch.no_grad():
        gauss.parametrizations.S.original.copy_(L)
    Lr = L.clone().requires_grad_(True)
    S = Lr @ Lr.mT + torch.eye(3, dtype=T)
    ref = 0.5 * torch.einsum("bi,ij,bj->b", x, torch.linalg.inv(S), x) + 0.5 * torch.logdet(S)
    torch.testing.assert_close(gauss(x), ref.detach())
    torch.testing.assert_close(gauss.gradient(x), x @ torch.linalg.inv(S).detach())
    (want,) = torch.autograd.grad(ref.sum(), Lr)
    got = gauss.parameter_gradient_sum(x)
    torch.testing.assert_close(got["parametrizations.S.original"], want)
    gauss(x).sum().backward()
    torch.testing.assert_close(gauss.parametrizations.S.original.grad, want)


@pytest.mark.parametrize("formula", ["a*sum(x**2) + sum(b*x)", "x @ W @ x + a*x[0]",
                                     "x @ inverse(W) @ x + x[0]*W[0, 1] + a*x[1]"])
def test_parametrized_direct_reads_reach_the_original(formula):
    """A parameter read directly by the formula (not through inverse()/logdet()) and
    provided by torch.nn.utils.parametrize: the closed-form parameter gradients (per
    sample, summed, batch total) chain its adjoint to ``parametrizations.<name>.original``
    (they returned zeros there). References: autograd of the same formula in plain torch,
    float64, through the same parametrizations."""
    import torch.nn as nn
    from torch.nn.utils import parametrize
    T = torch.float64
    g = torch.Generator().manual_seed(5)

    class Exp(nn.Module):
        def forward(self, v):
            return v.exp()

    class SPD(nn.Module):
        def forward(self, L):
            return L @ L.mT + 0.5 * torch.eye(L.shape[-1], dtype=L.dtype)

    x = torch.randn(6, 3, dtype=T, generator=g)
    w = torch.rand(6, dtype=T, generator=g) + 0.5
    a0 = torch.tensor(0.3, dtype=T)
    b = torch.randn(3, dtype=T, generator=g)
    L0 = torch.randn(3, 3, dtype=T, generator=g)
    kw = {"a": a0, "b": b} if "b" in formula else {"a": a0, "W": torch.eye(3, dtype=T)}
    energy = from_expression(formula, trainable=True, **kw)
    parametrize.register_parametrization(energy, "a", Exp())
    if "W" in formula:
        parametrize.register_parametrization(energy, "W", SPD())
        with torch.no_grad():
            energy.parametrizations.W.original.copy_(L0)
    ar = a0.clone().requires_grad_(True)
    Lr = L0.clone().requires_grad_(True)
    br = b.clone().requires_grad_(True)
    A = ar.exp()
    W = Lr @ Lr.mT + 0.5 * torch.eye(3, dtype=T)
    if "b" in formula:
        ref = A * (x**2).sum(-1) + x @ br
    elif "inverse" in formula:
        ref = torch.einsum("bi,ij,bj->b", x, torch.linalg.inv(W), x) + x[:, 0] * W[0, 1] \
            + A * x[:, 1]
    else:
        ref = torch.einsum("bi,ij,bj->b", x, W, x) + A * x[:, 0]
    names = [k for k, _ in energy.named_parameters()]
    leaves = {"parametrizations.a.original": ar, "parametrizations.W.original": Lr, "b": br}
    torch.testing.assert_close(energy(x), ref.detach())
    want = dict(zip(names, torch.autograd.grad((w * ref).sum(), [leaves[k] for k in names],
                                               retain_graph=True)))
    per = [dict(zip(names, torch.autograd.grad(ref[i], [leaves[k] for k in names],
                                               retain_graph=True))) for i in range(6)]
    got_sum = energy.parameter_gradient_sum(x, w)
    got_per = energy.parameter_gradient(x)
    (total,), got_total = energy._energy_total_and_parameter_gradient_sum((x, w))
    torch.testing.assert_close(total, (w * ref).sum().detach())
    for k in names:
        torch.testing.assert_close(got_sum[k], want[k])
        torch.testing.assert_close(got_total[k], want[k])
        torch.testing.assert_close(got_per[k], torch.stack([p[k] for p in per]))
