"""Exact score matching (Hyvarinen 2005) with closed-form and autograd Laplacians."""

import pytest
import torch

from torchebm.core import BaseEnergyFunction
from torchebm.losses import ScoreMatching, score_matching_loss
from torchebm.symbolic import from_expression

GAUSS = "sum(0.5*((x - mu)*exp(-log_s))**2)"


class _HandGauss(BaseEnergyFunction):
    def __init__(self, mu, log_s):
        super().__init__()
        self.mu = torch.nn.Parameter(mu.clone())
        self.log_s = torch.nn.Parameter(log_s.clone())

    def forward(self, x):
        return (0.5 * ((x - self.mu) * torch.exp(-self.log_s)) ** 2).sum(-1)


def test_loss_value_matches_the_hand_derived_gaussian_objective():
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    log_s = torch.tensor([0.1, -0.4, 0.7], dtype=torch.float64)
    x = torch.randn(50, 3, dtype=torch.float64)
    # |grad E|^2 / 2 - laplacian = sum (x - mu)^2 / (2 s^4) - sum 1 / s^2
    s2 = torch.exp(2 * log_s)
    want = (0.5 * (x - mu) ** 2 / s2**2).sum(-1) - (1 / s2).sum()
    compiled = from_expression(GAUSS, mu=mu, log_s=log_s)
    torch.testing.assert_close(score_matching_loss(compiled, x, "none"), want, rtol=1e-13,
                               atol=1e-13)
    torch.testing.assert_close(ScoreMatching(compiled)(x), want.mean(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(score_matching_loss(compiled, x, "sum"), want.sum(),
                               rtol=1e-13, atol=1e-12)
    hand = _HandGauss(mu, log_s)
    torch.testing.assert_close(score_matching_loss(hand, x, "none"), want, rtol=1e-13,
                               atol=1e-13)
    with pytest.raises(ValueError, match="reduction"):
        score_matching_loss(compiled, x, "average")


def test_parameter_gradients_match_the_autograd_fallback():
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64)
    log_s = torch.tensor([0.2, -0.3], dtype=torch.float64)
    x = torch.randn(40, 2, dtype=torch.float64)
    compiled = from_expression(GAUSS, mu=mu, log_s=log_s, trainable=True)
    hand = _HandGauss(mu, log_s)
    g1 = torch.autograd.grad(score_matching_loss(compiled, x), [compiled.mu, compiled.log_s])
    g2 = torch.autograd.grad(score_matching_loss(hand, x), [hand.mu, hand.log_s])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_training_a_gaussian_recovers_its_mean_and_scale():
    g = torch.Generator().manual_seed(0)
    mu_true = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    s_true = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    data = mu_true + s_true * torch.randn(20000, 3, dtype=torch.float64, generator=g)
    energy = from_expression(GAUSS, mu=torch.zeros(3), log_s=torch.zeros(3), trainable=True)
    loss_fn = ScoreMatching(energy)
    opt = torch.optim.LBFGS(energy.parameters(), lr=1.0, max_iter=200,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(data)
        loss.backward()
        return loss

    opt.step(closure)
    mu = energy.mu.detach()
    s = torch.exp(energy.log_s.detach())
    assert ((mu - mu_true).abs() / mu_true.abs()).max() < 0.05, mu
    assert ((s - s_true).abs() / s_true).max() < 0.05, s
