"""The four per-token policy objectives compared in the paper, as pure tensor functions (CleanRL style).

Every loss function has the signature ``(log_ratio, advantages, **hyperparameters) -> per_token_loss``:

- ``log_ratio`` = log p_theta(token) - log p_old(token), shape (B, T) (any shape works);
- ``advantages`` broadcastable to ``log_ratio`` (typically (B, 1): one group-normalised advantage per completion);
- the result is the *negated* surrogate (a loss to minimise), same shape as ``log_ratio``. Aggregation over tokens
  (masking, the DAPO token-sum normaliser) is the trainer's job, identical for all four objectives.

With r = exp(log_ratio) and A the advantage:

=========  ===============================================================  =========================
name       per-token loss                                                   gradient w.r.t. r
=========  ===============================================================  =========================
clip       -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)                 -A inside, 0 when clipped
noclip     -r A                                                             -A
sigmoid    -(4 / tau) sigmoid(tau (r - 1)) A,  tau = tau_pos if A > 0 else  -4 s(1-s) A, s = sigmoid(.)
           tau_neg  (SAPO; equals TRL's ``loss_type="sapo"`` per-token term)
pspo       -((1 - alpha) r + alpha) A   (GR-PSPO: probability smoothing)    -(1 - alpha) A
=========  ===============================================================  =========================

The distribution-level helpers (``smoothed_distribution``, ``total_variation``, ``kl_divergence``, ``entropy``) act on
probability vectors along the last dimension and exist to check the paper's trust-region statements numerically.

The functions validate their scalar hyperparameters (cheap Python checks) but never inspect tensor values, so they
add no device synchronisation.
"""

from __future__ import annotations

import torch

OBJECTIVES = ("clip", "noclip", "sigmoid", "pspo")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"smoothing alpha must be a number in [0, 1], got {alpha!r}")


def clip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float) -> torch.Tensor:
    r"""GRPO/PPO clipped surrogate, negated.

    .. math:: \ell = -\min\big(r A,\ \mathrm{clip}(r, 1-\epsilon_{low}, 1+\epsilon_{high})\, A\big),\quad r = e^{\log r}

    Same expression (and same evaluation order) as TRL's ``loss_type in {"grpo", "dapo", ...}`` branch.
    """
    if epsilon_low < 0 or epsilon_high < 0:
        raise ValueError(f"clip epsilons must be >= 0, got epsilon_low={epsilon_low}, epsilon_high={epsilon_high}")
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped * advantages)


def noclip_loss(log_ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    r"""Unclipped importance-sampled surrogate, negated.

    .. math:: \ell = -r A

    With a single pass (mu = 1) r == 1 in value and the gradient is the plain policy gradient -A grad log p.
    """
    return -torch.exp(log_ratio) * advantages


def sigmoid_loss(
    log_ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float = 1.0, tau_neg: float = 1.05
) -> torch.Tensor:
    r"""Soft (sigmoid-gated) clipping, SAPO (arXiv:2511.20347), negated.

    .. math:: \ell = -\frac{4}{\tau}\,\sigma\big(\tau (r - 1)\big) A,\qquad \tau = \tau_{pos} \text{ if } A > 0
              \text{ else } \tau_{neg}

    At r = 1 the value is -(2/tau) A and the slope is -A, like the unclipped surrogate; far from 1 the gate
    4 s (1 - s) (s = sigmoid(tau (r - 1))) decays smoothly to 0. Identical to TRL's ``loss_type="sapo"``
    per-token term (TRL aggregates sapo per sequence; here the trainer aggregates it the DAPO way).
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sigmoid temperatures must be > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, tau_pos, tau_neg)
    return -(torch.sigmoid(tau * (ratio - 1)) * 4 / tau) * advantages


def smoothed_ratio(log_ratio: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The smoothed importance ratio of GR-PSPO.

    .. math:: \tilde r = \frac{(1-\alpha) p_\theta + \alpha p_{old}}{p_{old}} = (1-\alpha) r + \alpha
    """
    _check_alpha(alpha)
    return (1 - alpha) * torch.exp(log_ratio) + alpha


def pspo_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""GR-PSPO (probability smoothing policy optimisation) surrogate, negated.

    .. math:: \ell = -\tilde r A = -\big((1-\alpha) r + \alpha\big) A

    No min and no clip: the gradient is (1 - alpha) times that of :func:`noclip_loss`, everywhere.
    alpha = 0 is the unclipped surrogate; alpha = 1 gives a constant (zero gradient).
    """
    return -smoothed_ratio(log_ratio, alpha) * advantages


LOSSES = {"clip": clip_loss, "noclip": noclip_loss, "sigmoid": sigmoid_loss, "pspo": pspo_loss}


def objective_loss(name: str, log_ratio: torch.Tensor, advantages: torch.Tensor, **hyperparameters) -> torch.Tensor:
    """Dispatch by objective name (one of :data:`OBJECTIVES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return LOSSES[name](log_ratio, advantages, **hyperparameters)


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics: the per-token quantity that says what each objective did, logged by the trainer as a masked mean
# (``objective/<name>``). noclip has none: its gradient is -A everywhere.


def clip_fraction(
    log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    r"""1 on the tokens whose gradient the clip zeroes, else 0.

    .. math:: \mathbb{1}\big[(r < 1-\epsilon_{low} \wedge A < 0) \vee (r > 1+\epsilon_{high} \wedge A > 0)\big]
    """
    ratio = torch.exp(log_ratio)
    clipped = ((ratio < 1 - epsilon_low) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    return clipped.to(ratio.dtype)


def sigmoid_gate(log_ratio: torch.Tensor, advantages: torch.Tensor, tau_pos: float = 1.0,
                 tau_neg: float = 1.05) -> torch.Tensor:
    r"""The sigmoid loss's gradient weight relative to the unclipped r A: 1 at r = 1, decaying to 0 far from it.

    .. math:: g = 4\, s (1 - s),\qquad s = \sigma\big(\tau (r - 1)\big)
    """
    tau = torch.where(advantages > 0, tau_pos, tau_neg)
    s = torch.sigmoid(tau * (torch.exp(log_ratio) - 1))
    return 4 * s * (1 - s)


def smoothed_ratio_diagnostic(log_ratio: torch.Tensor, advantages: torch.Tensor, alpha: float) -> torch.Tensor:
    r""":func:`smoothed_ratio` in the diagnostics' signature: :math:`\tilde r = (1-\alpha) r + \alpha`."""
    return smoothed_ratio(log_ratio, alpha)


# objective -> (logged name, per-token diagnostic); same hyperparameters as the objective's loss
DIAGNOSTICS = {
    "clip": ("clip_fraction", clip_fraction),
    "sigmoid": ("sigmoid_gate_mean", sigmoid_gate),
    "pspo": ("smoothed_ratio_mean", smoothed_ratio_diagnostic),
}


# ---------------------------------------------------------------------------------------------------------------
# Distribution-level helpers (probability vectors on the last dimension), for the theory checks.


def smoothed_distribution(p_theta: torch.Tensor, p_old: torch.Tensor, alpha: float) -> torch.Tensor:
    r""":math:`\tilde p = (1-\alpha) p_\theta + \alpha p_{old}` (a convex mixture, so still a distribution)."""
    _check_alpha(alpha)
    return (1 - alpha) * p_theta + alpha * p_old


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{TV}(p, q) = \tfrac12 \sum_a |p(a) - q(a)|` over the last dimension."""
    return 0.5 * (p - q).abs().sum(-1)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(p \| q) = \sum_a p(a) \log(p(a)/q(a))` over the last dimension (0 log 0 = 0)."""
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    r""":math:`H(p) = -\sum_a p(a) \log p(a)` over the last dimension (0 log 0 = 0)."""
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(-1)


__all__ = [
    "OBJECTIVES", "clip_loss", "noclip_loss", "sigmoid_loss", "pspo_loss", "smoothed_ratio", "objective_loss", "LOSSES",
    "clip_fraction", "sigmoid_gate", "smoothed_ratio_diagnostic", "DIAGNOSTICS",
    "smoothed_distribution", "total_variation", "kl_divergence", "entropy",
]
