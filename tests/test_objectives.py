"""The per-token objectives (pspo.objectives): values, gradients, the PSPO identities, input validation."""

from __future__ import annotations

import pytest
import torch

from pspo import objectives as O

_DTYPE = torch.float64  # exact-identity checks


def _batch(seed=0, B=6, T=9, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    log_ratio = (torch.randn(B, T, generator=g, dtype=_DTYPE) * scale).requires_grad_()
    adv = torch.randn(B, 1, generator=g, dtype=_DTYPE)
    return log_ratio, adv


def _grad(fn, log_ratio, adv, **kw):
    lr = log_ratio.detach().clone().requires_grad_()
    fn(lr, adv, **kw).sum().backward()
    return lr.grad


def test_shapes_and_values():
    lr, adv = _batch()
    r = lr.detach().exp()
    for name, kw in [("clip", dict(epsilon_low=0.2, epsilon_high=0.2)), ("noclip", {}), ("sigmoid", {}),
                     ("pspo", dict(alpha=0.1))]:
        out = O.objective_loss(name, lr, adv, **kw)
        assert out.shape == lr.shape and out.dtype == lr.dtype
    torch.testing.assert_close(O.noclip_loss(lr, adv), -r * adv)
    torch.testing.assert_close(O.pspo_loss(lr, adv, alpha=0.3), -(0.7 * r + 0.3) * adv)
    torch.testing.assert_close(O.clip_loss(lr, adv, 0.1, 0.3),
                               -torch.minimum(r * adv, r.clamp(0.9, 1.3) * adv))
    tau = torch.where(adv > 0, 1.0, 1.05)
    torch.testing.assert_close(O.sigmoid_loss(lr, adv), -(4 / tau) * torch.sigmoid(tau * (r - 1)) * adv)


def test_pspo_alpha_zero_is_noclip():
    lr, adv = _batch(1)
    torch.testing.assert_close(O.pspo_loss(lr, adv, alpha=0.0), O.noclip_loss(lr, adv), rtol=0, atol=0)
    torch.testing.assert_close(_grad(O.pspo_loss, lr, adv, alpha=0.0), _grad(O.noclip_loss, lr, adv), rtol=0, atol=0)


def test_pspo_alpha_one_has_zero_gradient():
    lr, adv = _batch(2)
    g = _grad(O.pspo_loss, lr, adv, alpha=1.0)
    assert torch.count_nonzero(g) == 0
    torch.testing.assert_close(O.pspo_loss(lr, adv, alpha=1.0), -adv.expand_as(lr))


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0])
def test_pspo_gradient_is_scaled_noclip_gradient(alpha):
    lr, adv = _batch(3, scale=2.0)  # ratios far outside any trust region too
    torch.testing.assert_close(_grad(O.pspo_loss, lr, adv, alpha=alpha),
                               (1 - alpha) * _grad(O.noclip_loss, lr, adv), rtol=1e-12, atol=1e-12)


def test_pspo_gradient_nonzero_where_clip_gradient_is_zero():
    eps = 0.2
    # r far outside [1 - eps, 1 + eps] on the side where clipping is active for the advantage's sign
    log_ratio = torch.log(torch.tensor([[3.0, 0.2]], dtype=_DTYPE))
    adv = torch.tensor([[1.0, -1.0]], dtype=_DTYPE).T.expand(2, 2).clone()  # rows: A>0, A<0
    lr = log_ratio.expand(2, 2).clone()
    g_clip = _grad(O.clip_loss, lr, adv, epsilon_low=eps, epsilon_high=eps)
    g_pspo = _grad(O.pspo_loss, lr, adv, alpha=0.1)
    # A>0 with r=3 (above 1+eps) and A<0 with r=0.2 (below 1-eps): clipped, zero gradient
    assert g_clip[0, 0] == 0 and g_clip[1, 1] == 0
    assert g_pspo[0, 0] != 0 and g_pspo[1, 1] != 0
    # d loss / d log r = -(1 - alpha) r A
    torch.testing.assert_close(g_pspo, -(0.9 * lr.exp() * adv))


def test_clip_gradient_inside_region_equals_noclip():
    lr = torch.full((1, 4), 0.05, dtype=_DTYPE)  # r ~ 1.05, inside [0.8, 1.2]
    adv = torch.tensor([[0.7]], dtype=_DTYPE)
    torch.testing.assert_close(_grad(O.clip_loss, lr, adv, epsilon_low=0.2, epsilon_high=0.2),
                               _grad(O.noclip_loss, lr, adv))


def test_sigmoid_at_ratio_one_has_noclip_slope_and_decays():
    adv = torch.tensor([[1.3], [-0.4]], dtype=_DTYPE)
    zero = torch.zeros(2, 1, dtype=_DTYPE)
    torch.testing.assert_close(_grad(O.sigmoid_loss, zero, adv), _grad(O.noclip_loss, zero, adv))
    far = torch.full((2, 1), 3.0, dtype=_DTYPE)  # r = e^3
    assert (_grad(O.sigmoid_loss, far, adv).abs() < 0.05 * _grad(O.noclip_loss, far, adv).abs()).all()


def test_smoothed_ratio_identities():
    lr, _ = _batch(4, scale=3.0)
    for alpha in (0.0, 0.1, 0.7, 1.0):
        rt = O.smoothed_ratio(lr.detach(), alpha)
        torch.testing.assert_close(rt - 1, (1 - alpha) * (lr.detach().exp() - 1))
        assert (rt >= alpha).all()


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), "0.1", None])
def test_alpha_validation(bad):
    lr, adv = _batch()
    with pytest.raises(ValueError, match="alpha"):
        O.pspo_loss(lr, adv, alpha=bad)
    with pytest.raises(ValueError, match="alpha"):
        O.smoothed_distribution(torch.ones(3) / 3, torch.ones(3) / 3, bad)


def test_other_validation():
    lr, adv = _batch()
    with pytest.raises(ValueError, match="epsilon"):
        O.clip_loss(lr, adv, -0.1, 0.2)
    with pytest.raises(ValueError, match="temperature"):
        O.sigmoid_loss(lr, adv, tau_pos=0.0)
    with pytest.raises(ValueError, match="unknown objective"):
        O.objective_loss("ppo", lr, adv)


def test_float32_and_broadcast_advantages_1d_per_token():
    lr = torch.randn(3, 5, dtype=torch.float32)
    adv = torch.randn(3, 5, dtype=torch.float32)  # per-token advantages also broadcast
    assert O.pspo_loss(lr, adv, 0.1).dtype == torch.float32
    assert O.clip_loss(lr, adv, 0.2, 0.2).shape == (3, 5)


def test_clip_with_epsilon_zero_has_no_gradient_where_the_ratio_moved_with_the_advantage():
    # The authors' released script ran clip with epsilon = 0: then min(r A, clip(r, 1, 1) A) = min(r A, A) is flat
    # wherever r moved in the advantage's direction (r > 1 for A > 0, r < 1 for A < 0), and keeps slope A elsewhere.
    r = torch.tensor([0.5, 0.9, 1.1, 2.0, 0.5, 0.9, 1.1, 2.0], dtype=torch.float64)
    adv = torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=torch.float64)
    lr = r.log().requires_grad_(True)
    (grad,) = torch.autograd.grad(O.clip_loss(lr, adv, 0.0, 0.0).sum(), lr)
    d_loss_d_r = grad / r  # d/dr = d/dlog r / r
    moved_with_advantage = ((r > 1) & (adv > 0)) | ((r < 1) & (adv < 0))
    assert (d_loss_d_r[moved_with_advantage] == 0).all()
    torch.testing.assert_close(d_loss_d_r[~moved_with_advantage], -adv[~moved_with_advantage])
