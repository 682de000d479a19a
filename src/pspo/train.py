"""The training driver (``pspo train``, the Snakemake ``train`` rule): one (model, objective, alpha, seed) GRPO run.

What it guarantees:

- **Resumable.** Checkpoints go to ``checkpoint_dir`` (outside the job's outputs, so a failed job keeps them) every
  ``save_steps``; the last ``keep_checkpoints`` are kept (HF ``save_total_limit``). A rerun resumes from the latest
  complete checkpoint (model, optimizer, scheduler, RNG, data position and TRL's generation-reuse buffer), so on
  CPU a run killed and resumed ends with the same parameters and log as an uninterrupted one
  (:mod:`pspo.checkpoints`).
- **Atomic outputs.** The final model (HF directory) is written to a temporary sibling and renamed; the per-step
  CSV log (:mod:`pspo.train_log`) is rewritten atomically at every logging step; ``summary_json`` is written last.
- **Fails loudly, in one line.** A non-finite loss or gradient norm stops the run with a PSPOError before the
  optimizer step (no NaN checkpoint is written; the last good one is kept). ``require_gpu=True`` without CUDA is
  refused at once (:mod:`pspo.device`).
- **No silent non-result.** A run with no learning signal (every gradient zero, or no group with reward spread)
  ends with ``"trained": false`` and a one-line warning (log and stderr) in ``summary_json``; pspo.report marks
  it "not trained" instead of reporting its accuracy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pspo.checkpoints import checkpoint_record, checkpoint_step, resume_point
from pspo.device import job_device
from pspo.errors import PSPOError
from pspo.io import atomic_path, read_jsonl, write_json_atomic
from pspo.rewards import REWARD_FUNCTIONS
from pspo.train_log import TIMING_COLUMNS, csv_log_callback, learning_signal, write_log_csv

log = logging.getLogger("pspo.train")

# Fields of PSPOConfig the driver sets itself (from checkpoint_dir and keep_checkpoints).
_DRIVER_FIELDS = {"output_dir", "save_total_limit", "resume_from_checkpoint", "report_to"}


def _resolve_reward(reward: str | Callable | Sequence[Callable]) -> list[Callable]:
    if callable(reward):
        return [reward]
    if isinstance(reward, (list, tuple)) and reward and all(callable(f) for f in reward):
        return list(reward)
    if reward not in REWARD_FUNCTIONS:
        raise PSPOError(f"unknown reward {reward!r}; valid: {', '.join(REWARD_FUNCTIONS)}")
    return [REWARD_FUNCTIONS[reward]]


def _load_rows(path: str | os.PathLike, system_prompt: str | None) -> list[dict]:
    from pspo.prompts import build_messages

    rows = read_jsonl(path)
    if not rows:
        raise PSPOError(f"{path}: no rows")
    out = []
    for i, row in enumerate(rows, start=1):
        missing = [k for k in ("id", "question", "answer") if k not in row]
        if missing:
            raise PSPOError(f"{path}: row {i} lacks {', '.join(missing)} (expected keys id, question, answer)")
        out.append({"id": str(row["id"]), "prompt": build_messages(row["question"], system_prompt=system_prompt),
                     "answer": str(row["answer"])})
    return out


def weight_change(model, base_dir: str | os.PathLike) -> dict:
    """How far training moved the weights: ||theta - theta_0|| / ||theta_0|| over every parameter of the base
    checkpoint (float64 sums), and the largest absolute change. 0 means the "trained" model is its base."""
    from pspo.weights import distances, load_weights

    base = load_weights(base_dir)
    dist, base_norm, compared = distances(base, {"moved": (dict(model.named_parameters()), base)})
    l2, max_abs = dist["moved"]
    return {"relative_l2": l2 / base_norm if base_norm else None, "max_abs": max_abs, "tensors_compared": compared}


def _check_settings(settings: dict, objective: str, alpha: float | None, seed: int) -> dict:
    """``grpo_settings`` without the job's own objective, alpha and seed (which they may repeat, not contradict)."""
    settings = dict(settings)
    for key, value in (("objective", objective), ("seed", seed), ("smoothing_alpha", alpha)):
        if key in settings and settings[key] != value:
            raise PSPOError(f"grpo_settings[{key!r}]={settings[key]!r} contradicts the {key} argument ({value!r})")
        settings.pop(key, None)
    bad = sorted(_DRIVER_FIELDS & settings.keys())
    if bad:
        raise PSPOError(f"grpo_settings may not set {', '.join(bad)}: the driver sets them (checkpoint_dir, keep_checkpoints)")
    return settings


def _pspo_config(settings: dict, **fields):
    """PSPOConfig of the run; TRL's own errors (an unknown field, a bad value) become one line."""
    from pspo.trainer import PSPOConfig

    kwargs = dict(settings, **fields)
    kwargs.setdefault("disable_tqdm", True)
    kwargs.setdefault("save_strategy", "steps")
    try:
        return PSPOConfig(**kwargs)
    except TypeError as e:  # an unknown field name
        raise PSPOError(f"grpo_settings: {e}".replace("\n", " ")) from None
    except ValueError as e:
        raise PSPOError(f"grpo_settings: {str(e).splitlines()[0]}") from None


def _refuse_other_outputs(summary_json: str | os.PathLike, run_hash: str) -> None:
    """Existing outputs of a different configuration are never replaced silently."""
    if not Path(summary_json).is_file():
        return
    try:
        old_hash = json.loads(Path(summary_json).read_text(encoding="utf-8"))["provenance"]["config_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        old_hash = None
    if old_hash not in (None, run_hash):
        raise PSPOError(
            f"{summary_json} holds a run of a different configuration (hash {old_hash}, this run {run_hash}); "
            "choose other output paths, or pass --overwrite to replace it"
        )


def run_training(
    *,
    model_dir: str | os.PathLike,
    train_file: str | os.PathLike,
    val_file: str | os.PathLike | None,
    output_dir: str | os.PathLike,
    log_csv: str | os.PathLike,
    summary_json: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    objective: str,
    seed: int,
    grpo_settings: dict,
    alpha: float | None = None,
    reward: str | Callable | Sequence[Callable] = "paper",
    system_prompt: str | None = None,
    keep_checkpoints: int = 2,
    keep_checkpoints_after_training: bool | None = None,
    require_gpu: bool = False,
    threads: int | None = None,
    provenance_extra: dict | None = None,
    callbacks: Sequence[Any] = (),
    overwrite: bool = False,
) -> dict:
    """Train one GRPO run with the chosen objective; write the model, the per-step CSV log and a summary JSON.

    ``grpo_settings`` are :class:`pspo.trainer.PSPOConfig` fields (learning_rate, num_iterations, epsilon,
    per_device_train_batch_size, ..., max_steps or num_train_epochs, save_steps, logging_steps, eval_strategy...).
    ``reward`` is ``"paper"`` / ``"correctness"`` (:mod:`pspo.rewards`) or reward function(s) in TRL's signature.
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests use them to inject faults).
    Checkpoints of a different configuration found in ``checkpoint_dir`` are moved to ``<dir>.stale-<hash>``, not
    resumed; ``keep_checkpoints_after_training`` (None: the config schema's default, false) keeps them once the final
    model is written. ``threads``: torch's CPU threads (None: $PSPO_TORCH_THREADS, else torch's default).
    Existing outputs of a different configuration (``summary_json``) are an error unless ``overwrite``.
    Returns the summary dict.
    """
    model_name = (provenance_extra or {}).get("model") or Path(model_dir).name
    with job_device(model=model_name, require_gpu=require_gpu, threads=threads):
        _check_gpu_memory(model_dir, grpo_settings, model_name)
        return _train(
            model_dir=model_dir, train_file=train_file, val_file=val_file, output_dir=output_dir, log_csv=log_csv,
            summary_json=summary_json, checkpoint_dir=checkpoint_dir, objective=objective, seed=seed,
            grpo_settings=grpo_settings, alpha=alpha, reward=reward, system_prompt=system_prompt,
            keep_checkpoints=keep_checkpoints, keep_checkpoints_after_training=keep_checkpoints_after_training,
            provenance_extra=provenance_extra, callbacks=callbacks, overwrite=overwrite,
        )


def _check_gpu_memory(model_dir, grpo_settings: dict, model_name: str) -> None:
    """On a GPU: refuse, in one line and before loading, one too small for the model's training state."""
    import torch

    if not torch.cuda.is_available() or grpo_settings.get("use_cpu"):
        return
    from pspo.memory import GIB, check_training_fits

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    check_training_fits(model_dir, grpo_settings, model=model_name, gpu_name=props.name,
                        gpu_gib=props.total_memory / GIB)


def _train(*, model_dir, train_file, val_file, output_dir, log_csv, summary_json, checkpoint_dir, objective, seed,
           grpo_settings, alpha, reward, system_prompt, keep_checkpoints, keep_checkpoints_after_training,
           provenance_extra, callbacks, overwrite) -> dict:
    """run_training's body, inside the device checks."""
    if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
        raise PSPOError(f"keep_checkpoints must be an integer >= 1, got {keep_checkpoints!r}")
    if keep_checkpoints_after_training is None:
        from pspo.config import schema_default

        keep_checkpoints_after_training = schema_default("training", "keep_checkpoints_after_training")

    from pspo.models import check_model_dir
    from pspo.provenance import config_hash, provenance

    check_model_dir(model_dir)
    settings = _check_settings(grpo_settings, objective, alpha, seed)
    reward_funcs = _resolve_reward(reward)
    t0 = time.time()

    from datasets import Dataset
    from transformers import AutoTokenizer

    from pspo.trainer import PSPOTrainer

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fields = dict(output_dir=str(checkpoint_dir), objective=objective, seed=seed, save_total_limit=keep_checkpoints,
                  report_to=[])
    if alpha is not None:
        fields["smoothing_alpha"] = alpha
    args = _pspo_config(settings, **fields)
    alpha = args.smoothing_alpha if objective == "pspo" else None  # PSPOConfig's default where the job gives none

    # The identity of the run: checkpoints from another configuration must not be resumed silently.
    run_config = {"model_dir": str(Path(model_dir).resolve()), "objective": objective, "alpha": alpha,
                  "seed": seed, "grpo_settings": settings, "reward": reward if isinstance(reward, str) else "custom",
                  "system_prompt": system_prompt}
    run_hash = config_hash(run_config)
    if not overwrite:
        _refuse_other_outputs(summary_json, run_hash)
    resume = resume_point(checkpoint_dir, run_hash, run_config)

    train_ds = Dataset.from_list(_load_rows(train_file, system_prompt))
    eval_ds = None
    if val_file is not None and getattr(args.eval_strategy, "value", args.eval_strategy) != "no":
        eval_ds = Dataset.from_list(_load_rows(val_file, system_prompt))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = PSPOTrainer(
        model=str(model_dir), reward_funcs=reward_funcs, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=[csv_log_callback(log_csv), *callbacks],
    )
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    rows = write_log_csv(log_csv, trainer.state.log_history)
    signal = learning_signal(rows)
    warnings = signal.pop("warnings")
    for w in warnings:
        log.warning("%s", w)
    if not signal["trained"]:
        print(f"pspo train: warning: {warnings[0]}", file=sys.stderr)

    moved = weight_change(trainer.model, model_dir)
    with atomic_path(output_dir, is_dir=True) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))

    data_files = [train_file] + ([val_file] if val_file is not None and Path(val_file).is_file() else [])
    final = {k: v for k, v in (rows[-1] if rows else {}).items() if k not in TIMING_COLUMNS}
    summary = {
        "objective": objective,
        "alpha": alpha,
        "seed": seed,
        "num_iterations": args.num_iterations,
        "steps": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "wall_time_s": time.time() - t0,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_loss": result.metrics.get("train_loss"),
        "resumed_from": str(resume) if resume is not None else None,
        "resumed_at_step": checkpoint_step(resume) if resume is not None else None,
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
        **checkpoint_record(checkpoint_dir),
        "device": str(args.device),
        "generation": {"backend": "vllm" if trainer.use_vllm else "transformers",
                       **({"vllm_mode": args.vllm_mode, "vllm_dtype": args.colocated_vllm_dtype(),
                           "weight_syncs": trainer.vllm_weight_syncs} if trainer.use_vllm else {})},
        "final_log_row": final,
        "trained": signal["trained"],  # False: no learning signal, the model equals its base (pspo.report marks it)
        "learning_signal": signal,
        "weight_change_from_base": moved,
        "warnings": warnings,
        "provenance": provenance(
            config=run_config, data_files=data_files, model_dir=str(model_dir), **(provenance_extra or {})
        ),
    }
    if not keep_checkpoints_after_training:
        # The final model is the output; checkpoints exist to resume an interrupted run (CPU grids save disk).
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        summary["checkpoints_removed_after_training"] = True
    write_json_atomic(summary_json, summary)
    return summary


__all__ = ["run_training", "weight_change"]
