"""The training driver (``pspo train``, the Snakemake ``train`` rule): one (model, objective, alpha, seed) GRPO run.

What it guarantees:

- **Resumable.** Checkpoints go to ``checkpoint_dir`` (outside the job's outputs, so a failed job keeps them) every
  ``save_steps``; the last ``keep_checkpoints`` are kept (HF ``save_total_limit``). A rerun resumes from the latest
  complete checkpoint (model, optimizer, scheduler, RNG, data position and TRL's generation-reuse buffer), so on
  CPU a run killed and resumed ends with the same parameters and log as an uninterrupted one.
- **Atomic outputs.** The final model (HF directory) is written to a temporary sibling and renamed; the per-step
  CSV log is rewritten atomically at every logging step from the trainer's ``log_history`` (which a resume reads
  back from the checkpoint, so rows from before the resume are kept); ``summary_json`` is written last.
- **Fails loudly, in one line.** A non-finite loss or gradient norm stops the run with a PSPOError before the
  optimizer step (no NaN checkpoint is written; the last good one is kept). ``require_gpu=True`` without CUDA is
  refused at once.
- **No silent non-result.** A run with no learning signal (every gradient zero, or no group with reward spread)
  ends with ``"trained": false`` and a one-line warning (log and stderr) in ``summary_json``; pspo.report marks
  it "not trained" instead of reporting its accuracy.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pspo.errors import PSPOError
from pspo.io import atomic_path, read_jsonl, write_json_atomic, write_text_atomic

log = logging.getLogger("pspo.train")

REWARDS = {"paper": "paper_reward", "correctness": "correctness_reward"}
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
RUN_CONFIG_FILE = "pspo_run_config.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")

GPU_MESSAGE = ("this is a GPU-sized job (model {model}); no GPU here: use config/cpu.yaml for a CPU run, "
               "or run on a cluster with `snakemake --profile slurm`")


# --------------------------------------------------------------------------------------------------- helpers
def _resolve_reward(reward: str | Callable | Sequence[Callable]) -> list[Callable]:
    if callable(reward):
        return [reward]
    if isinstance(reward, (list, tuple)) and reward and all(callable(f) for f in reward):
        return list(reward)
    if reward not in REWARDS:
        raise PSPOError(f"unknown reward {reward!r}; valid: {', '.join(REWARDS)}")
    rewards = importlib.import_module("pspo.rewards")
    return [getattr(rewards, REWARDS[reward])]


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


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _CKPT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def _is_complete(ckpt: Path) -> bool:
    """HF writes trainer_state.json last; a checkpoint whose state file parses is complete."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(checkpoint_dir: str | os.PathLike, *, remove_incomplete: bool = False) -> Path | None:
    """The complete checkpoint with the highest step in ``checkpoint_dir`` (or None).

    With ``remove_incomplete``, checkpoints newer than it that a kill left half-written are deleted.
    """
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    ckpts = sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step)
    complete = [p for p in ckpts if _is_complete(p)]
    latest = complete[-1] if complete else None
    if remove_incomplete:
        for p in ckpts:
            if not _is_complete(p) and (latest is None or checkpoint_step(p) > checkpoint_step(latest)):
                log.warning("removing incomplete checkpoint %s (the run was killed while saving it)", p)
                shutil.rmtree(p, ignore_errors=True)
    return latest


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


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


def weight_change(model, base_dir: str | os.PathLike) -> dict:
    """How far training moved the weights: ||theta - theta_0|| / ||theta_0|| over every parameter of the base
    checkpoint (float64 sums), and the largest absolute change. 0 means the "trained" model is its base."""
    from pspo.control import distances, load_weights

    base = load_weights(base_dir)
    dist, base_norm, compared = distances(base, {"moved": (dict(model.named_parameters()), base)})
    l2, max_abs = dist["moved"]
    return {"relative_l2": l2 / base_norm if base_norm else None, "max_abs": max_abs, "tensors_compared": compared}


def _make_csv_callback(log_csv: str | os.PathLike):
    from transformers import TrainerCallback

    class CsvLogCallback(TrainerCallback):
        """Rewrite the CSV (atomically) from the full log history at every log event."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_log_csv(log_csv, state.log_history)

    return CsvLogCallback()


def _check_settings(settings: dict, objective: str, alpha: float | None, seed: int) -> dict:
    settings = dict(settings)
    for key, value in (("objective", objective), ("seed", seed), ("smoothing_alpha", alpha)):
        if key in settings and settings[key] != value:
            raise PSPOError(f"grpo_settings[{key!r}]={settings[key]!r} contradicts the {key} argument ({value!r})")
        settings.pop(key, None)
    reserved = {"output_dir", "save_total_limit", "resume_from_checkpoint", "report_to"}
    bad = sorted(reserved & settings.keys())
    if bad:
        raise PSPOError(f"grpo_settings may not set {', '.join(bad)}: the driver sets them (checkpoint_dir, keep_checkpoints)")
    return settings


def _threads() -> None:
    import torch

    n = os.environ.get("PSPO_TORCH_THREADS")
    if n:
        try:
            torch.set_num_threads(int(n))
        except ValueError:
            raise PSPOError(f"PSPO_TORCH_THREADS={n!r} is not an integer") from None


# --------------------------------------------------------------------------------------------------- driver
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
    keep_checkpoints_after_training: bool = True,
    require_gpu: bool = False,
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
    resumed; ``keep_checkpoints_after_training=False`` deletes the checkpoints once the final model is written.
    Existing outputs of a different configuration (``summary_json``) are an error unless ``overwrite``.
    Returns the summary dict.
    """
    import torch

    model_name = (provenance_extra or {}).get("model") or Path(model_dir).name
    if require_gpu and not torch.cuda.is_available():
        raise PSPOError(GPU_MESSAGE.format(model=model_name))
    if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
        raise PSPOError(f"keep_checkpoints must be an integer >= 1, got {keep_checkpoints!r}")

    from pspo.models import check_model_dir
    from pspo.provenance import config_hash, provenance

    check_model_dir(model_dir)
    settings = _check_settings(grpo_settings, objective, alpha, seed)
    reward_funcs = _resolve_reward(reward)
    _threads()
    t0 = time.time()

    from datasets import Dataset
    from transformers import AutoTokenizer

    from pspo.trainer import PSPOConfig, PSPOTrainer

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    args_kwargs = dict(
        settings, output_dir=str(checkpoint_dir), objective=objective, seed=seed, save_total_limit=keep_checkpoints,
        report_to=[],
    )
    if alpha is not None:
        args_kwargs["smoothing_alpha"] = alpha
    args_kwargs.setdefault("disable_tqdm", True)
    args_kwargs.setdefault("save_strategy", "steps")
    try:
        args = PSPOConfig(**args_kwargs)
    except TypeError as e:  # an unknown field name
        raise PSPOError(f"grpo_settings: {e}".replace("\n", " ")) from None
    except ValueError as e:
        raise PSPOError(f"grpo_settings: {str(e).splitlines()[0]}") from None

    # The identity of the run: checkpoints from another configuration must not be resumed silently.
    run_config = {"model_dir": str(Path(model_dir).resolve()), "objective": objective, "alpha": args.smoothing_alpha,
                  "seed": seed, "grpo_settings": settings, "reward": reward if isinstance(reward, str) else "custom",
                  "system_prompt": system_prompt}
    run_hash = config_hash(run_config)
    if Path(summary_json).is_file() and not overwrite:
        try:
            old_hash = json.loads(Path(summary_json).read_text(encoding="utf-8"))["provenance"]["config_hash"]
        except (OSError, ValueError, KeyError, TypeError):
            old_hash = None
        if old_hash not in (None, run_hash):
            raise PSPOError(
                f"{summary_json} holds a run of a different configuration (hash {old_hash}, this run {run_hash}); "
                "choose other output paths, or pass --overwrite to replace it"
            )
    marker = checkpoint_dir / RUN_CONFIG_FILE
    resume = latest_checkpoint(checkpoint_dir, remove_incomplete=True)
    if marker.is_file():
        old = json.loads(marker.read_text(encoding="utf-8")).get("config_hash")
        if old != run_hash and resume is not None:
            # Checkpoints of another configuration are never resumed, nor overwritten: they are moved aside.
            stale = checkpoint_dir.with_name(f"{checkpoint_dir.name}.stale-{old}")
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(checkpoint_dir, stale)
            print(f"pspo train: {checkpoint_dir} held checkpoints of another configuration (hash {old}, this run "
                  f"{run_hash}); moved them to {stale} and starting from step 0", file=sys.stderr)
            checkpoint_dir.mkdir(parents=True)
            resume = None
    write_json_atomic(marker, {"config_hash": run_hash, "config": run_config})
    if resume is not None:
        log.warning("resuming from %s (step %s)", resume, checkpoint_step(resume))
        print(f"pspo train: resuming from {resume}", file=sys.stderr)

    train_ds = Dataset.from_list(_load_rows(train_file, system_prompt))
    eval_ds = None
    if val_file is not None and getattr(args.eval_strategy, "value", args.eval_strategy) != "no":
        eval_ds = Dataset.from_list(_load_rows(val_file, system_prompt))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = PSPOTrainer(
        model=str(model_dir), reward_funcs=reward_funcs, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=[_make_csv_callback(log_csv), *callbacks],
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
        "alpha": args.smoothing_alpha,
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
        "checkpoint_dir": str(checkpoint_dir),
        "checkpoints": sorted(p.name for p in checkpoint_dir.iterdir() if checkpoint_step(p) is not None),
        "checkpoint_disk_bytes": _dir_size(checkpoint_dir),
        "device": str(args.device),
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


# --------------------------------------------------------------------------------------------------- CLI
def _parse_settings(text: str) -> dict:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            raise PSPOError(f"{path}: --grpo-settings file not found") from None
        if path.suffix in (".yaml", ".yml"):
            import yaml

            value = yaml.safe_load(text)
        else:
            value = _json_or_error(text, str(path))
    else:
        value = _json_or_error(text, "--grpo-settings")
    if not isinstance(value, dict):
        raise PSPOError("--grpo-settings must be a JSON object of PSPOConfig fields")
    return value


def _json_or_error(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PSPOError(f"{where}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pspo train", description=run_training.__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--train-file", required=True)
    p.add_argument("--val-file")
    p.add_argument("--output-dir", required=True, help="final model (HF directory)")
    p.add_argument("--log-csv", required=True)
    p.add_argument("--summary-json", required=True)
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--objective", required=True, choices=["clip", "noclip", "sigmoid", "pspo"])
    p.add_argument("--alpha", type=float, help="PSPO smoothing alpha (objective pspo; default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grpo-settings", default="{}", help="PSPOConfig fields as a JSON object, or @file (.json/.yaml)")
    p.add_argument("--reward", default="paper", choices=sorted(REWARDS))
    p.add_argument("--system-prompt")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--require-gpu", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of a different configuration")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    summary = run_training(
        model_dir=a.model_dir, train_file=a.train_file, val_file=a.val_file, output_dir=a.output_dir,
        log_csv=a.log_csv, summary_json=a.summary_json, checkpoint_dir=a.checkpoint_dir, objective=a.objective,
        seed=a.seed, grpo_settings=_parse_settings(a.grpo_settings), alpha=a.alpha, reward=a.reward,
        system_prompt=a.system_prompt, keep_checkpoints=a.keep_checkpoints, require_gpu=a.require_gpu,
        overwrite=a.overwrite,
    )
    print(json.dumps({k: summary[k] for k in ("objective", "alpha", "seed", "steps", "trained", "resumed_from",
                                                   "wall_time_s")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from pspo.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
