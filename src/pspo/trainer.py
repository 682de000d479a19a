"""TRL's GRPO with a choice of per-token objective: clip, noclip, sigmoid (SAPO) or pspo (GR-PSPO).

Everything except the per-token surrogate is TRL's: generation, group-normalised advantages, data reuse
(``num_iterations`` = mu), the DAPO token-sum aggregation, the beta-KL term, TRL's vLLM importance-sampling
correction, logging. The four objectives therefore differ *only* in the ratio transform
(:mod:`pspo.objectives`), reached through one override point, :meth:`PSPOTrainer.per_token_loss`.

Use it in your own TRL script exactly like ``GRPOConfig`` / ``GRPOTrainer``::

    from datasets import Dataset
    from pspo.trainer import PSPOConfig, PSPOTrainer

    def reward_len(completions, **kwargs):          # any TRL reward function
        return [-abs(20 - len(c)) / 20 for c in completions]

    args = PSPOConfig(
        output_dir="out", objective="pspo", smoothing_alpha=0.1,   # GR-PSPO
        num_iterations=2,                                          # mu = 2: the second pass is off-policy
        learning_rate=5e-7, num_generations=4, per_device_train_batch_size=4,
        gradient_accumulation_steps=16, max_completion_length=128, temperature=0.8, top_p=0.9,
    )
    # objective="clip", epsilon=0.2 | objective="noclip" | objective="sigmoid", sapo_temperature_pos=1.0, ...
    trainer = PSPOTrainer(model="Qwen/Qwen2.5-0.5B", reward_funcs=reward_len, args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["1+1=", "2+2="] * 8}))
    trainer.train()

Written against trl==1.16.0 (see :data:`TRL_VERSION`): TRL's ``GRPOTrainer._compute_loss`` has no hook for the
per-token loss, so :meth:`PSPOTrainer._compute_loss` is a trimmed copy of it in which the ``loss_type`` branch is
replaced by ``self.per_token_loss(...)`` and only the DAPO aggregation is kept. TRL features that would need the
dropped code (sequence-level ratios, two-sided ``delta`` clipping, the entropy bonus) are refused by
:class:`PSPOConfig`. tests/test_trainer.py checks that ``objective="clip"`` reproduces TRL's own
``loss_type="dapo"`` loss and gradient, so a TRL upgrade that changes the shared parts fails loudly.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, field

import torch
import trl
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanmax, nanmin

from pspo import objectives
from pspo.errors import PSPOError

TRL_VERSION = "1.16.0"
if trl.__version__ != TRL_VERSION:  # pragma: no cover - depends on the environment
    warnings.warn(
        f"pspo.trainer was written against trl=={TRL_VERSION}; trl=={trl.__version__} is installed. "
        "Run tests/test_trainer.py to check that the clip objective still matches TRL's dapo loss.",
        stacklevel=2,
    )

OBJECTIVES = objectives.OBJECTIVES
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")  # PSPOConfig.vllm_dtype
# GRPOConfig defaults of the hyperparameters that belong to one objective only: leaving them at these values is
# always allowed; changing them for another objective is a configuration mistake and is refused.
_GRPO_DEFAULTS = {"epsilon": 0.2, "epsilon_high": None, "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.05,
                  "smoothing_alpha": 0.1}
_OWNER = {"epsilon": "clip", "epsilon_high": "clip", "sapo_temperature_pos": "sigmoid",
          "sapo_temperature_neg": "sigmoid", "smoothing_alpha": "pspo"}
# Name of the checkpoint file holding the state TRL keeps outside HF's trainer state (see PSPOTrainer._save_checkpoint)
REUSE_STATE_FILE = "pspo_reuse_state_rank{rank}.pt"


class PSPOConfigError(ValueError):
    """A PSPOConfig value that cannot work; the message is one line."""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def flagged_ranks(flag: bool, reduce, rank: int = 0, world_size: int = 1, device=None) -> list[int]:
    """The ranks whose ``flag`` is set, the same list on every rank (one SUM all-reduce of a one-hot vector).

    ``reduce(tensor)`` must sum ``tensor`` across ranks, e.g. ``lambda t: accelerator.reduce(t, reduction="sum")``
    (the identity with one process). It is a collective: every rank must call this at the same point, or the
    ranks that did block. ``device`` must suit the backend (the model's device for NCCL).
    """
    onehot = torch.zeros(world_size, dtype=torch.float32, device=device)
    if flag:
        onehot[rank] = 1.0
    total = reduce(onehot)
    return [i for i, v in enumerate(total.tolist()) if v > 0]


@dataclass
class PSPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the choice of per-token objective.

    Objective-specific hyperparameters reuse GRPOConfig's fields: ``epsilon`` / ``epsilon_high`` (clip),
    ``sapo_temperature_pos`` / ``sapo_temperature_neg`` (sigmoid), and the new ``smoothing_alpha`` (pspo; 0.1, the
    paper's). ``num_iterations`` is mu. Aggregation is always ``loss_type="dapo"`` (token sum over all completion
    tokens of the global batch) so that the four objectives differ only in the ratio transform.
    The paper's "GRPO-noclip" is ``objective="noclip", num_iterations=1``; the control "GRPO-noclip-mu2" is
    ``objective="noclip", num_iterations=2``.
    """

    objective: str = field(
        default="pspo",
        metadata={"help": "Per-token surrogate: 'clip' (GRPO), 'noclip' (r A), 'sigmoid' (SAPO soft clip) or "
                          "'pspo' (probability smoothing, GR-PSPO).", "choices": list(OBJECTIVES)},
    )
    smoothing_alpha: float = field(
        default=0.1,
        metadata={"help": "PSPO smoothing alpha in [0, 1] (objective='pspo' only; 0.1 is the paper's): "
                          "r~ = (1 - alpha) r + alpha."},
    )

    vllm_dtype: str = field(
        default="auto",
        metadata={"help": "dtype of the colocated vLLM engine. 'auto': the training precision (bfloat16 with bf16=True, "
                          "float16 with fp16=True, else float32), so vLLM's log-probs are the trainer's up to kernel "
                          "precision; TRL passes none, and vLLM's own 'auto' runs a float32 checkpoint in half "
                          "precision.", "choices": list(VLLM_DTYPES)},
    )

    def colocated_vllm_dtype(self) -> str:
        """The dtype of the colocated vLLM engine (see ``vllm_dtype``)."""
        if self.vllm_dtype != "auto":
            return self.vllm_dtype
        return "bfloat16" if self.bf16 else "float16" if self.fp16 else "float32"

    def __post_init__(self):
        self._validate_objective()
        super().__post_init__()
        self._validate_reuse()
        self._validate_vllm()

    def _validate_vllm(self) -> None:
        if self.vllm_dtype not in VLLM_DTYPES:
            raise PSPOConfigError(f"vllm_dtype must be one of {', '.join(VLLM_DTYPES)}, got {self.vllm_dtype!r}")
        if self.use_vllm and self.vllm_importance_sampling_correction and self.top_p < 1.0:
            warnings.warn(
                f"use_vllm with top_p={self.top_p} and vllm_importance_sampling_correction=True: TRL's correction "
                "divides by vLLM's log-probs *after* top-p renormalisation, so it weights every completion by its "
                "tokens' nucleus mass (a product of numbers < 1), not by the vLLM-vs-trainer mismatch; set "
                "vllm_importance_sampling_correction=False for the objective a transformers-generated run optimises",
                stacklevel=3)

    def _validate_reuse(self) -> None:
        """mu >= 2 only makes a pass off-policy if TRL computes old log-probs, which it skips when every generation
        batch is used up inside one optimiser step: then r = 1 on every pass and all objectives collapse silently."""
        generate_every = self.steps_per_generation * self.num_iterations
        if self.num_iterations >= 2 and self.gradient_accumulation_steps % generate_every == 0 and not self.use_vllm:
            raise PSPOConfigError(
                f"num_iterations={self.num_iterations} reuses nothing off-policy: gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps} is a multiple of steps_per_generation x num_iterations = "
                f"{generate_every}, so every pass sees r = 1; make steps_per_generation equal to "
                "gradient_accumulation_steps (the default) or use num_iterations=1")
        if self.num_iterations == 1 and self.objective != "noclip":
            warnings.warn(
                f"objective={self.objective!r} with num_iterations=1: the ratio is 1 in value on every pass, so the "
                "objective changes nothing but the gradient's scale (pspo: 1 - alpha); use num_iterations >= 2 to "
                "compare objectives", stacklevel=3)

    def _validate_objective(self) -> None:
        def fail(msg: str):
            raise PSPOConfigError(msg)

        if self.objective not in OBJECTIVES:
            fail(f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}")
        if self.loss_type != "dapo":
            fail(f"PSPOConfig aggregates every objective the DAPO way: loss_type must be 'dapo', got "
                 f"{self.loss_type!r} (choose the surrogate with objective=...)")
        if self.importance_sampling_level != "token":
            fail(f"PSPOConfig objectives use token-level ratios: importance_sampling_level must be 'token', got "
                 f"{self.importance_sampling_level!r}")
        if self.delta is not None:
            fail("delta (two-sided clipping) is not supported by PSPOTrainer; leave it None")
        if self.entropy_coef != 0 or self.use_adaptive_entropy:
            fail("the entropy bonus (entropy_coef / use_adaptive_entropy) is not supported by PSPOTrainer")
        if isinstance(self.num_iterations, bool) or not isinstance(self.num_iterations, int) or self.num_iterations < 1:
            fail(f"num_iterations (mu) must be an integer >= 1, got {self.num_iterations!r}")
        if not _is_number(self.epsilon) or self.epsilon < 0:
            fail(f"epsilon must be a finite number >= 0, got {self.epsilon!r}")
        if self.epsilon_high is not None and (not _is_number(self.epsilon_high) or self.epsilon_high < 0):
            fail(f"epsilon_high must be a finite number >= 0, got {self.epsilon_high!r}")
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                fail(f"{name} (sigmoid tau) must be a finite number > 0, got {value!r}")
        if not _is_number(self.beta) or self.beta < 0:
            fail(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.smoothing_alpha is None:  # unset, as TRL's own optional fields
            self.smoothing_alpha = _GRPO_DEFAULTS["smoothing_alpha"]
        # Hyperparameters of another objective: refuse, so that a typo in a sweep cannot silently do nothing.
        for name, default in _GRPO_DEFAULTS.items():
            value = getattr(self, name)
            if _OWNER[name] != self.objective and value != default:
                fail(f"{name}={value!r} applies to objective={_OWNER[name]!r} only, but objective="
                     f"{self.objective!r}; remove it")
        if not _is_number(self.smoothing_alpha) or not 0.0 <= self.smoothing_alpha <= 1.0:
            fail(f"smoothing_alpha must be a number in [0, 1], got {self.smoothing_alpha!r}")
        self.smoothing_alpha = float(self.smoothing_alpha)


class PSPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose per-token surrogate is chosen by ``PSPOConfig.objective``.

    Override :meth:`per_token_loss` to try another ratio transform; everything else is TRL's.
    Extra metrics (``self._metrics[mode]``, averaged per logging step by TRL): ``objective/ratio_mean``,
    ``objective/ratio_std``, ``objective/ratio_min``, ``objective/ratio_max`` (r = p_theta / p_old over completion
    tokens), ``objective/clip_fraction`` (clip: tokens whose gradient the clip zeroes), ``objective/smoothed_ratio_mean``
    (pspo), ``objective/sigmoid_gate_mean`` (sigmoid: gradient weight 4 s (1 - s) relative to r A; 1 at r = 1).
    TRL's own ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean``, ``clip_ratio/low_min``
    and ``clip_ratio/high_max`` are logged as TRL logs them for ``loss_type="dapo"``, with every objective (the
    tokens outside [1 - epsilon, 1 + epsilon_high] on the side the clip would zero; only clip zeroes them).
    A non-finite loss or gradient norm stops training with a PSPOError before the optimiser step (so no NaN
    checkpoint is ever written).
    """

    _tag_names = ["trl", "grpo", "pspo"]

    def __init__(self, model, reward_funcs, args: PSPOConfig | None = None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            on_cpu = {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}  # TRL's bf16 needs a GPU
            args = PSPOConfig(output_dir=f"{name.split('/')[-1]}-PSPO", **on_cpu)
        elif not isinstance(args, PSPOConfig):
            raise PSPOConfigError(f"PSPOTrainer needs a PSPOConfig, got {type(args).__name__}")
        engine = contextlib.nullcontext()
        if args.use_vllm and args.vllm_mode == "colocate":
            from pspo import vllm_env  # TRL's colocated LLM(...) is built inside GRPOTrainer.__init__

            on_gpu = torch.cuda.is_available()
            engine = vllm_env.colocated_engine(dtype=args.colocated_vllm_dtype(), enforce_eager=None if on_gpu else True)
        with engine:
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.objective = self.args.objective
        self.vllm_weight_syncs = 0  # TRL's syncs of the policy into vLLM in this process (the run summary records it)
        if self.use_vllm:
            sync = self.vllm_generation.sync_weights

            def counted_sync():
                sync()
                self.vllm_weight_syncs += 1

            self.vllm_generation.sync_weights = counted_sync

    # ---------------------------------------------------------------------------------------------- override point
    def per_token_loss(self, log_ratio: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
        """Negated per-token surrogate for ``log_ratio`` (B, T) and ``advantages`` (B, 1) or (B, T)."""
        return objectives.objective_loss(self.objective, log_ratio, advantages, **self.objective_hyperparameters())

    def objective_hyperparameters(self) -> dict:
        """The keyword arguments of the objective's loss (and diagnostic) in :mod:`pspo.objectives`."""
        if self.objective == "clip":
            return {"epsilon_low": self.epsilon_low, "epsilon_high": self.epsilon_high}
        if self.objective == "sigmoid":
            return {"tau_pos": self.args.sapo_temperature_pos, "tau_neg": self.args.sapo_temperature_neg}
        if self.objective == "pspo":
            return {"alpha": self.args.smoothing_alpha}
        return {}

    # ------------------------------------------------------------------------------------------- metrics
    @torch.no_grad()
    def _log_objective_metrics(self, mode: str, log_ratio: torch.Tensor, advantages: torch.Tensor,
                               mask: torch.Tensor) -> None:
        # Sums in float64 and of r - 1 (expm1, exact near r = 1): at small learning rates the ratio's spread is ~1e-4,
        # which E[r^2] - E[r]^2 in float32 cancels to 0.
        ratio = torch.exp(log_ratio.detach())
        mask = mask.to(torch.float64)
        dev = torch.expm1(log_ratio.detach().to(torch.float64))
        sums = [dev * mask, dev.square() * mask]
        diagnostic = objectives.DIAGNOSTICS.get(self.objective)  # (name, per-token function) beside the loss
        if diagnostic is not None:
            per_token = diagnostic[1](log_ratio.detach(), advantages, **self.objective_hyperparameters())
            sums.append(per_token * mask)
        local = torch.stack([x.to(torch.float64).sum() for x in sums] + [mask.sum()])
        totals = self.accelerator.reduce(local, reduction="sum")
        n = totals[-1].clamp(min=1.0)
        mean_dev = totals[0] / n
        var = (totals[1] / n - mean_dev.square()).clamp(min=0.0)
        mean = 1.0 + mean_dev
        big = torch.finfo(ratio.dtype).max
        # [min r, -max r] per process, then the elementwise min over processes
        extremes = torch.stack([torch.where(mask > 0, ratio, big).min(), -torch.where(mask > 0, ratio, -big).max()])
        extremes = self.accelerator.gather(extremes.unsqueeze(0)).min(dim=0).values
        # With mu >= 2 the first pass over a generation batch has r = 1 by construction; the objectives differ only
        # on the later (reused) passes, so their statistics are also logged on their own, undiluted.
        reused = self._pass_index(mode) >= 1
        m = self._metrics[mode]
        values = torch.stack([mean, var.sqrt(), extremes[0].to(torch.float64), -extremes[1].to(torch.float64)]
                             + [t / n for t in totals[2:-1]]).tolist()
        names = ["objective/ratio_mean", "objective/ratio_std", "objective/ratio_min", "objective/ratio_max"]
        names += [f"objective/{diagnostic[0]}"] if diagnostic is not None else []
        for name, value in zip(names, values):
            m[name].append(value)
            if reused:
                m[name.replace("objective/", "objective/reused/")].append(value)

    @torch.no_grad()
    def _log_trl_clip_ratio(self, mode: str, ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor):
        # TRL (trl==1.16.0 GRPOTrainer._compute_loss, loss_type "dapo"): the clip_ratio/* metrics, same names.
        def global_masked_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        def masked_seq_mean(x):
            return (x * mask).sum(-1) / mask.sum(-1)

        is_low_clipped = ((ratio < 1 - self.epsilon_low) & (advantages < 0)).float()
        is_high_clipped = ((ratio > 1 + self.epsilon_high) & (advantages > 0)).float()
        is_region_clipped = torch.maximum(is_low_clipped, is_high_clipped)
        m = self._metrics[mode]
        m["clip_ratio/low_mean"].append(global_masked_mean(is_low_clipped))
        m["clip_ratio/high_mean"].append(global_masked_mean(is_high_clipped))
        m["clip_ratio/region_mean"].append(global_masked_mean(is_region_clipped))
        m["clip_ratio/low_min"].append(nanmin(self.accelerator.gather(masked_seq_mean(is_low_clipped))).item())
        m["clip_ratio/high_max"].append(nanmax(self.accelerator.gather(masked_seq_mean(is_high_clipped))).item())

    def _pass_index(self, mode: str) -> int:
        """0 on the first (on-policy) pass over a generation batch, k on its k-th reuse (from TRL's micro-step
        counter, which GRPOTrainer.training_step advances after the loss is computed)."""
        if mode != "train" or self.num_iterations < 2 or not hasattr(self, "_step"):
            return 0
        return (self._step // self.args.steps_per_generation) % self.num_iterations

    # ------------------------------------------------------------------------------------------- loss
    def _compute_loss(self, model, inputs):
        # Trimmed copy of trl==1.16.0 GRPOTrainer._compute_loss: the loss_type branch is replaced by
        # self.per_token_loss and only the "dapo" aggregation is kept (PSPOConfig enforces loss_type="dapo",
        # token-level ratios, no delta, no entropy bonus). Comments "TRL:" mark lines kept verbatim in substance.
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"), pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"), num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"), token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"), image_position_ids=inputs.get("image_position_ids"),
        )
        entropy_mask = (self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
                        if self.top_entropy_quantile < 1.0 else None)

        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        # TRL: with mu = 1 (and no vLLM) old logps are not computed; the ratio is then exactly 1 in value.
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps

        if self.off_policy_mask_threshold is not None:
            sampling_per_token_logps = inputs.get("sampling_per_token_logps", old_per_token_logps)
            off_policy_mask = self.get_off_policy_mask(
                advantages=advantages, per_token_logps=per_token_logps,
                sampling_per_token_logps=sampling_per_token_logps, mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            )

        log_ratio = per_token_logps - old_per_token_logps  # token level (PSPOConfig enforces it)

        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(log_ratio)

        per_token_loss = self.per_token_loss(log_ratio, advantages)  # <- the only change of substance

        if self.off_policy_mask_threshold is not None:
            per_token_loss = per_token_loss * off_policy_mask
        if entropy_mask is not None:
            per_token_loss = per_token_loss * entropy_mask
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token_loss = per_token_loss * inputs["importance_sampling_ratio"]
        if self.beta != 0.0:
            per_token_loss = per_token_loss + self.beta * per_token_kl

        mode = "train" if self.model.training else "eval"
        # TRL "dapo": `num_items_in_batch` spans the generation batch, so rescale it to one accumulation window
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        loss = (per_token_loss * mask).sum() / normalizer

        if self.aux_loss_enabled:
            aux_normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / aux_normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        def global_masked_mean(x):
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl))
        self._metrics[mode]["entropy"].append(global_masked_mean(entropies))
        self._log_objective_metrics(mode, log_ratio, advantages, mask)
        self._log_trl_clip_ratio(mode, torch.exp(log_ratio.detach()), advantages, mask)
        return loss

    # ------------------------------------------------------------------------------------------- safety
    def training_step(self, model, inputs, num_items_in_batch):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The loss is per rank: decide together (one tiny all-reduce per micro-step), so that every rank raises
        # when any rank's loss is non-finite instead of one rank raising and the others hanging in the next
        # collective. Every rank runs the same number of training_step calls, so the collectives match.
        own_bad = not bool(torch.isfinite(loss).all())
        acc = self.accelerator
        world = acc.num_processes
        bad = flagged_ranks(own_bad, lambda t: acc.reduce(t, reduction="sum"), rank=acc.process_index,
                            world_size=world, device=loss.device)
        if bad:
            value = loss.item() if own_bad else "on another rank"
            raise PSPOError(
                f"non-finite loss ({value}) at step {self.state.global_step + 1} (objective {self.objective}); "
                f"training stopped before the optimizer step on all ranks (non-finite on {len(bad)} of {world} "
                f"rank(s): {', '.join(map(str, bad))}); the last good checkpoint is kept"
            )
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        # No collective needed here: gradients are all-reduced before the norm, so every rank sees the same value.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value):
            raise PSPOError(
                f"non-finite gradient norm ({value}) at step {self.state.global_step + 1} (objective "
                f"{self.objective}); training stopped before the optimizer step; the last good checkpoint is kept"
            )
        return grad_norm

    # ------------------------------------------------------------------------------------------- exact resume
    # TRL keeps the generation buffer (reused for mu passes) and its micro-step counter outside HF's trainer state,
    # so a resume from a checkpoint taken between two passes over the same generations would regenerate. Saving
    # them with the checkpoint makes a resumed run identical to an uninterrupted one.
    def _reuse_state_name(self) -> str:
        return REUSE_STATE_FILE.format(rank=self.accelerator.process_index)

    def _save_checkpoint(self, model, trial):
        # Written *before* HF's files: HF writes trainer_state.json last (and rotates old checkpoints only after
        # it), so a checkpoint with a readable trainer_state.json is complete, reuse state included.
        # Every process keeps its own slice of the generation batch, so every process writes its own file.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        buffered = self._buffered_inputs
        if buffered is not None:
            buffered = [{k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in b.items()} for b in buffered]
        torch.save({"step": self._step, "buffered_inputs": buffered}, os.path.join(folder, self._reuse_state_name()))
        # Every rank's file exists before rank 0 writes trainer_state.json, which marks the checkpoint complete.
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, self._reuse_state_name())
        if os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=False)
            device = self.accelerator.device
            buffered = state["buffered_inputs"]
            if buffered is not None:
                buffered = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()} for b in buffered]
            self._step = state["step"]
            self._buffered_inputs = buffered


__all__ = ["PSPOConfig", "PSPOTrainer", "PSPOConfigError", "OBJECTIVES", "TRL_VERSION"]
