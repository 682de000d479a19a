"""The training run's per-step CSV log, and what it says about the learning signal.

The CSV is rewritten atomically from the trainer's ``log_history`` at every logging step (a resume reads that
history back from the checkpoint, so rows from before the resume are kept). :func:`learning_signal` reads those
rows: a GRPO run whose groups all got equal rewards has zero gradients and ends equal to its base model.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

from pspo.io import write_text_atomic

# The CSV always has these columns (empty where a step has no value: reward and completion statistics exist only
# on steps that generated, i.e. every mu-th step; the objective-specific column only for that objective). Any other
# logged key follows, sorted.
CSV_COLUMNS = (
    "step", "epoch", "loss", "reward", "reward_std", "frac_reward_zero_std",
    "objective/ratio_mean", "objective/ratio_std", "objective/ratio_min", "objective/ratio_max",
    "objective/clip_fraction", "objective/smoothed_ratio_mean", "objective/sigmoid_gate_mean",
    "objective/reused/ratio_std", "objective/reused/clip_fraction",
    "completions/mean_length", "completions/min_length", "completions/max_length", "completions/clipped_ratio",
    "entropy", "kl", "learning_rate", "grad_norm", "num_tokens", "step_time", "eval_reward", "eval_reward_std",
)
# Keys of the end-of-training record (not a step row) and wall-clock keys that differ between identical runs.
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")
TIMING_COLUMNS = ("step_time", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def log_rows(log_history: list[dict]) -> list[dict]:
    """One row per logged step: the training record and any evaluation record of that step merged."""
    by_step: dict[int, dict] = {}
    for rec in log_history:
        if any(k in rec for k in _SUMMARY_KEYS):
            continue
        step = int(rec.get("step", 0))
        by_step.setdefault(step, {"step": step}).update(rec)
    return [by_step[s] for s in sorted(by_step)]


def write_log_csv(path: str | os.PathLike, log_history: list[dict]) -> list[dict]:
    rows = log_rows(log_history)
    extra = sorted({k for r in rows for k in r} - set(CSV_COLUMNS))
    columns = list(CSV_COLUMNS) + extra
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    write_text_atomic(path, buf.getvalue())
    return rows


def csv_log_callback(log_csv: str | os.PathLike):
    """A TrainerCallback that rewrites the CSV (atomically) from the full log history at every log event."""
    from transformers import TrainerCallback

    class CsvLogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_log_csv(log_csv, state.log_history)

    return CsvLogCallback()


# Below this fraction of optimiser steps with a non-zero gradient the run learned from few batches: a soft warning.
MIN_NONZERO_GRAD_FRACTION = 0.8
NO_SIGNAL_FIX = ("let completions finish (max_completion_length), use prompts on which the model sometimes earns "
                 "reward, or sample more completions per group (num_generations)")


def _number(v: Any) -> float | None:
    """A logged value as a finite float; None for missing, empty (a CSV cell) or non-finite."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def learning_signal(rows: Sequence[dict]) -> dict:
    """Did the optimiser get a gradient? A GRPO run whose groups all got equal rewards has zero advantages, hence
    zero gradients, and ends equal to its base model: it must not be reported as a trained result.

    ``rows`` are :func:`log_rows` (or the CSV's rows, as strings). Training steps are rows with a loss or a
    gradient norm (a missing or non-finite grad_norm counts as zero); generation steps are rows with
    ``frac_reward_zero_std`` or ``reward_std``, and have reward spread unless every group had none (fraction 1,
    or std 0). Returns the counts, ``trained`` (False when no step had a gradient, or no generation step had
    reward spread) and ``warnings`` (one-line strings; empty when the run is fine).
    """
    train = [r for r in rows if _number(r.get("loss")) is not None or _number(r.get("grad_norm")) is not None]
    nonzero = sum(1 for r in train if (_number(r.get("grad_norm")) or 0.0) != 0.0)
    generation = [r for r in rows
                  if _number(r.get("frac_reward_zero_std")) is not None or _number(r.get("reward_std")) is not None]
    spread = sum(1 for r in generation
                 if _number(r.get("frac_reward_zero_std")) != 1.0 and _number(r.get("reward_std")) != 0.0)
    n, g = len(train), len(generation)
    steps = (f"{nonzero} of {n} optimiser steps had a non-zero gradient and {spread} of {g} generation steps "
             "had reward spread")
    if g and not spread:
        warnings = [f"no learning signal: every generation step had zero reward spread (all completions of each "
                    f"group got the same reward), so every advantage was 0 and the model did not learn ({steps}); "
                    f"{NO_SIGNAL_FIX}"]
    elif n and not nonzero:
        warnings = [f"no learning signal: every optimiser step had gradient norm 0, so the model equals its base "
                    f"({steps}); check that not every completion is masked (mask_truncated_completions with "
                    "completions cut at max_completion_length) and that the reward varies within groups"]
    elif n and nonzero / n < MIN_NONZERO_GRAD_FRACTION:
        warnings = [f"weak learning signal: only {steps}; {NO_SIGNAL_FIX}"]
    elif not n:
        warnings = ["no training step was logged (logging_steps > max_steps?), so the learning signal is unchecked"]
    else:
        warnings = []
    return {"steps": n, "nonzero_grad_steps": nonzero, "generation_steps": g, "steps_with_reward_spread": spread,
            "nonzero_grad_fraction": nonzero / n if n else None,
            "trained": not ((g and not spread) or (n and not nonzero)), "warnings": warnings}


__all__ = ["CSV_COLUMNS", "TIMING_COLUMNS", "log_rows", "write_log_csv", "csv_log_callback", "learning_signal",
           "MIN_NONZERO_GRAD_FRACTION", "NO_SIGNAL_FIX"]
