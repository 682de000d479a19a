"""The paper's trust-region statements (Lemma 2.1, Corollary 2.2, Propositions 2.3-2.5 as stated in PAPER.md),
checked numerically on many random distributions, and the mu = 1 equivalence of the four objectives."""

from __future__ import annotations

import pytest
import torch

from pspo import objectives as O

D = torch.float64
ALPHAS = [0.0, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0]


def _dists(seed: int, n: int = 2000, k: int = 12, peaked: bool = False):
    """n pairs (p_theta, p_old) of distributions over k actions; softmax of wide logits gives near-deterministic ones."""
    g = torch.Generator().manual_seed(seed)
    scale = 6.0 if peaked else 1.5
    p = torch.softmax(torch.randn(n, k, generator=g, dtype=D) * scale, -1)
    q = torch.softmax(torch.randn(n, k, generator=g, dtype=D) * scale, -1)
    return p, q


@pytest.fixture(params=[(0, False), (1, True), (2, False)], ids=["flat", "peaked", "flat2"])
def pq(request):
    seed, peaked = request.param
    return _dists(seed, peaked=peaked)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_tv_contracts_exactly(pq, alpha):
    p, q = pq
    pt = O.smoothed_distribution(p, q, alpha)
    torch.testing.assert_close(pt.sum(-1), torch.ones(len(p), dtype=D))
    torch.testing.assert_close(O.total_variation(pt, q), (1 - alpha) * O.total_variation(p, q), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_kl_contracts(pq, alpha):
    p, q = pq
    pt = O.smoothed_distribution(p, q, alpha)
    lhs, rhs = O.kl_divergence(pt, q), (1 - alpha) * O.kl_divergence(p, q)
    assert (lhs <= rhs + 1e-12).all()
    if 0 < alpha < 1:  # strict convexity: strictly smaller whenever p != q
        assert (lhs < rhs).float().mean() > 0.99


@pytest.mark.parametrize("alpha", ALPHAS)
def test_smoothed_ratio_and_probability_bounds(pq, alpha):
    p, q = pq
    pt = O.smoothed_distribution(p, q, alpha)
    r, rt = p / q, pt / q
    torch.testing.assert_close(rt - 1, (1 - alpha) * (r - 1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(rt, O.smoothed_ratio(torch.log(p) - torch.log(q), alpha), rtol=1e-9, atol=1e-9)
    assert (rt >= alpha - 1e-12).all()
    assert (pt <= (1 - alpha) + alpha * q + 1e-12).all()


@pytest.mark.parametrize("alpha", ALPHAS)
def test_entropy_lower_bound(pq, alpha):
    p, q = pq
    pt = O.smoothed_distribution(p, q, alpha)
    assert (O.entropy(pt) >= (1 - alpha) * O.entropy(p) + alpha * O.entropy(q) - 1e-12).all()


def test_helpers_on_known_values():
    p = torch.tensor([1.0, 0.0], dtype=D)
    q = torch.tensor([0.5, 0.5], dtype=D)
    assert O.total_variation(p, q).item() == pytest.approx(0.5)
    assert O.kl_divergence(p, q).item() == pytest.approx(torch.log(torch.tensor(2.0, dtype=D)).item())
    assert O.entropy(q).item() == pytest.approx(torch.log(torch.tensor(2.0, dtype=D)).item())
    assert O.entropy(p).item() == 0.0


def test_smoothed_ratio_slope_is_constant():
    # d(r~ A)/dr = (1 - alpha) A everywhere: never zero for alpha < 1, unlike the clipped surrogate
    r = torch.linspace(0.01, 10.0, 500, dtype=D).requires_grad_()
    for alpha in (0.1, 0.2):
        (rt,) = torch.autograd.grad(O.smoothed_ratio(torch.log(r), alpha).sum(), r)
        torch.testing.assert_close(rt, torch.full_like(r, 1 - alpha))


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5])
def test_mu1_all_objectives_same_gradient_up_to_scale(alpha):
    """With mu = 1, old logps are the current logps detached: r == 1 in value, and only the gradient survives."""
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 8, 30, generator=g, dtype=D, requires_grad=True)
    tokens = torch.randint(0, 30, (5, 8), generator=g)
    adv = torch.randn(5, 1, generator=g, dtype=D)

    def grad_of(name, **kw):
        logps = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        log_ratio = logps - logps.detach()
        assert torch.equal(log_ratio.detach(), torch.zeros_like(log_ratio))
        (grad,) = torch.autograd.grad(O.objective_loss(name, log_ratio, adv, **kw).sum(), logits)
        return grad

    reference = grad_of("noclip")
    assert reference.abs().max() > 0
    torch.testing.assert_close(grad_of("clip", epsilon_low=0.2, epsilon_high=0.2), reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of("sigmoid", tau_pos=1.0, tau_neg=1.05), reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_of("pspo", alpha=alpha), (1 - alpha) * reference, rtol=1e-12, atol=1e-14)
    # and that common gradient is the plain policy gradient -A grad log p
    logps = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    (pg,) = torch.autograd.grad((-adv * logps).sum(), logits)
    torch.testing.assert_close(reference, pg, rtol=1e-12, atol=1e-14)
