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

from pspo import distributed
from pspo.checkpoints import checkpoint_record, checkpoint_step, latest_checkpoint, resume_point
from pspo.device import job_device
from pspo.errors import PSPOError
from pspo.io import atomic_path, read_jsonl, write_json_atomic
from pspo.rewards import REWARD_FUNCTIONS
from pspo.train_log import TIMING_COLUMNS, csv_log_callback, learning_signal, log_rows, write_log_csv

log = logging.getLogger("pspo.train")

# Fields of PSPOConfig the driver sets itself (from checkpoint_dir and keep_checkpoints).
_DRIVER_FIELDS = {"output_dir", "save_total_limit", "resume_from_checkpoint", "report_to"}


def _resolve_reward(reward: str | Callable | Sequence[Callable]) -> list[Callable]:
    if callable(reward):
        return [reward]
    if isinstance(reward, (list, tuple)) and reward and all(callable(f) for f in reward):
        return list(reward)
    if isinstance(reward, str) and ":" in reward:  # "package.module:function", importable in every rank
        import importlib

        module, _, name = reward.partition(":")
        try:
            func = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise PSPOError(f"reward {reward!r} cannot be imported ({e}); give 'module:function' on the path") from None
        return [func]
    if reward not in REWARD_FUNCTIONS:
        raise PSPOError(f"unknown reward {reward!r}; valid: {', '.join(REWARD_FUNCTIONS)} or 'module:function'")
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
    processes: int = 1,
    accelerate_config: str | None = None,
    nodes: int = 1,
) -> dict:
    """Train one GRPO run with the chosen objective; write the model, the per-step CSV log and a summary JSON.

    ``grpo_settings`` are :class:`pspo.trainer.PSPOConfig` fields (learning_rate, num_iterations, epsilon,
    per_device_train_batch_size, ..., max_steps or num_train_epochs, save_steps, logging_steps, eval_strategy...).
    ``reward`` is ``"paper"`` / ``"correctness"`` (:mod:`pspo.rewards`), ``"module:function"`` or reward
    function(s) in TRL's signature.
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (tests use them to inject faults).
    Checkpoints of a different configuration found in ``checkpoint_dir`` are moved to ``<dir>.stale-<hash>``, not
    resumed; ``keep_checkpoints_after_training`` (None: the config schema's default, false) keeps them once the final
    model is written. ``threads``: torch's CPU threads (None: $PSPO_TORCH_THREADS, else torch's default).
    Existing outputs of a different configuration (``summary_json``) are an error unless ``overwrite``.
    ``processes`` > 1 trains data parallel (:mod:`pspo.distributed`): called without a launcher, this launches
    the ranks (with ``accelerate_config``, one of TRL's accelerate configs) and waits; each rank then runs this
    function too. ``threads`` is then per rank. ``nodes`` > 1 spreads the ``processes`` ranks evenly over that many
    nodes of the SLURM job this runs in. Returns the summary dict.
    """
    model_name = (provenance_extra or {}).get("model") or Path(model_dir).name
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise PSPOError(f"processes must be an integer >= 1, got {processes!r}")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1 or processes % nodes:
        raise PSPOError(f"nodes must be an integer >= 1 that divides processes ({processes}), got {nodes!r}")
    if accelerate_config is not None and processes == 1:
        raise PSPOError(f"accelerate_config {accelerate_config!r} needs processes > 1 (one rank per GPU)")
    launcher = processes > 1 and distributed.world_size() == 1
    if distributed.world_size() not in (1, processes):
        raise PSPOError(f"this rank is one of {distributed.world_size()}, but the run asks for {processes} processes")
    # A launcher over several nodes runs in a job step without GPUs (its ranks' steps hold them): they check theirs.
    with job_device(model=model_name, require_gpu=require_gpu and not (launcher and nodes > 1), threads=threads):
        if not launcher:  # the launcher holds no GPU: its ranks check their own
            _check_gpu_memory(model_dir, grpo_settings, model_name)
        kwargs = dict(
            model_dir=model_dir, train_file=train_file, val_file=val_file, output_dir=output_dir, log_csv=log_csv,
            summary_json=summary_json, checkpoint_dir=checkpoint_dir, objective=objective, seed=seed,
            grpo_settings=grpo_settings, alpha=alpha, reward=reward, system_prompt=system_prompt,
            keep_checkpoints=keep_checkpoints, keep_checkpoints_after_training=keep_checkpoints_after_training,
            provenance_extra=provenance_extra, overwrite=overwrite, processes=processes,
        )
        if launcher:
            return _launch(kwargs, threads=threads, accelerate_config=accelerate_config, callbacks=callbacks,
                           nodes=nodes, require_gpu=require_gpu)
        return _train(**kwargs, callbacks=callbacks)


def _check_gpu_memory(model_dir, grpo_settings: dict, model_name: str) -> None:
    """On a GPU: refuse, in one line and before loading, one too small for the model's training state."""
    import torch

    if not torch.cuda.is_available() or grpo_settings.get("use_cpu"):
        return
    from pspo.memory import GIB, check_training_fits

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    check_training_fits(model_dir, grpo_settings, model=model_name, gpu_name=props.name,
                        gpu_gib=props.total_memory / GIB)


def _run_identity(*, model_dir, objective, alpha, seed, settings, reward, system_prompt, processes) -> tuple:
    """(alpha, run config, its hash): checkpoints from another configuration must not be resumed silently."""
    from pspo.provenance import config_hash
    from pspo.trainer import PSPOConfig

    if objective != "pspo":
        alpha = None
    elif alpha is None:
        alpha = PSPOConfig.__dataclass_fields__["smoothing_alpha"].default
    run_config = {"model_dir": str(Path(model_dir).resolve()), "objective": objective, "alpha": alpha,
                  "seed": seed, "grpo_settings": settings, "reward": reward if isinstance(reward, str) else "custom",
                  "system_prompt": system_prompt}
    if processes > 1:
        run_config["processes"] = processes
    return alpha, run_config, config_hash(run_config)


def _launch(kwargs: dict, *, threads, accelerate_config, callbacks, nodes, require_gpu) -> dict:
    """The launching process of a multi-process run: the run's filesystem work once, then the ranks."""
    from pspo.models import check_model_dir

    if callbacks:
        raise PSPOError("callbacks cannot reach the ranks of a multi-process run; use processes=1")
    if not isinstance(kwargs["reward"], str):
        raise PSPOError("a multi-process run names its reward (e.g. 'paper'); a function cannot reach the ranks")
    check_model_dir(kwargs["model_dir"])
    processes = kwargs["processes"]
    settings = distributed.per_process_settings(
        _check_settings(kwargs["grpo_settings"], kwargs["objective"], kwargs["alpha"], kwargs["seed"]), processes)
    _, run_config, run_hash = _run_identity(
        model_dir=kwargs["model_dir"], objective=kwargs["objective"], alpha=kwargs["alpha"], seed=kwargs["seed"],
        settings=settings, reward=kwargs["reward"], system_prompt=kwargs["system_prompt"], processes=processes)
    if not kwargs["overwrite"]:
        _refuse_other_outputs(kwargs["summary_json"], run_hash)
    checkpoint_dir = Path(kwargs["checkpoint_dir"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    resume_point(checkpoint_dir, run_hash, run_config)  # moves stale checkpoints aside; the ranks only read
    per_rank = max(1, threads // (processes // nodes)) if threads else None  # a node's threads over its ranks
    distributed.launch({**kwargs, "threads": per_rank, "require_gpu": require_gpu}, processes=processes,
                       accelerate_config=accelerate_config,
                       spec_path=checkpoint_dir / "launch.json", nodes=nodes,
                       gpus_per_node=processes // nodes if require_gpu else 0)
    return json.loads(Path(kwargs["summary_json"]).read_text(encoding="utf-8"))


def _save_final_model(trainer, tokenizer, output_dir) -> None:
    """The final model, renamed into place whole. With several ranks every rank takes part in the save (a sharded
    model is gathered collectively) and rank 0 writes and renames."""
    if trainer.accelerator.num_processes == 1:
        with atomic_path(output_dir, is_dir=True) as tmp:
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        return
    acc, output_dir = trainer.accelerator, Path(output_dir)
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-ranks")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    acc.wait_for_everyone()


def _train(*, model_dir, train_file, val_file, output_dir, log_csv, summary_json, checkpoint_dir, objective, seed,
           grpo_settings, alpha, reward, system_prompt, keep_checkpoints, keep_checkpoints_after_training,
           provenance_extra, callbacks, overwrite, processes) -> dict:
    """run_training's body, inside the device checks: one process, or one rank of ``processes``."""
    if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
        raise PSPOError(f"keep_checkpoints must be an integer >= 1, got {keep_checkpoints!r}")
    if keep_checkpoints_after_training is None:
        from pspo.config import schema_default

        keep_checkpoints_after_training = schema_default("training", "keep_checkpoints_after_training")

    from pspo.models import check_model_dir
    from pspo.provenance import provenance

    check_model_dir(model_dir)
    settings = distributed.per_process_settings(_check_settings(grpo_settings, objective, alpha, seed), processes)
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
    if processes > 1 and "ddp_backend" not in settings:
        import torch

        if not torch.cuda.is_available():  # CPU ranks: gloo on CPU (without both, accelerate starts no DDP)
            fields["ddp_backend"] = "gloo"
            fields.setdefault("use_cpu", True)
    args = _pspo_config(settings, **fields)
    alpha, run_config, run_hash = _run_identity(
        model_dir=model_dir, objective=objective, alpha=alpha, seed=seed, settings=settings, reward=reward,
        system_prompt=system_prompt, processes=processes)
    if not overwrite:
        _refuse_other_outputs(summary_json, run_hash)
    if processes == 1:
        resume = resume_point(checkpoint_dir, run_hash, run_config)
    else:  # the launcher moved stale checkpoints aside and removed a half-written one (pspo.distributed)
        resume = latest_checkpoint(checkpoint_dir)

    train_ds = Dataset.from_list(_load_rows(train_file, system_prompt))
    eval_ds = None
    if val_file is not None and getattr(args.eval_strategy, "value", args.eval_strategy) != "no":
        eval_ds = Dataset.from_list(_load_rows(val_file, system_prompt))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = PSPOTrainer(
        model=str(model_dir), reward_funcs=reward_funcs, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=tokenizer, callbacks=[csv_log_callback(log_csv), *callbacks],
    )
    if trainer.accelerator.num_processes != processes:
        raise PSPOError(f"this run asks for {processes} processes but the trainer joined "
                        f"{trainer.accelerator.num_processes} (distributed type {trainer.accelerator.distributed_type}); "
                        "set ddp_backend in the GRPO settings (gloo on CPU, nccl on GPUs)")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    main = trainer.accelerator.is_main_process
    rows = write_log_csv(log_csv, trainer.state.log_history) if main else log_rows(trainer.state.log_history)
    signal = learning_signal(rows)
    warnings = signal.pop("warnings")
    for w in warnings:
        log.warning("%s", w)
    if not signal["trained"] and main:
        print(f"pspo train: warning: {warnings[0]}", file=sys.stderr)

    moved = weight_change(trainer.model, model_dir) if main else None
    _save_final_model(trainer, tokenizer, output_dir)

    data_files = [train_file] + ([val_file] if val_file is not None and Path(val_file).is_file() else [])
    final = {k: v for k, v in (rows[-1] if rows else {}).items() if k not in TIMING_COLUMNS}
    summary = {
        "objective": objective,
        "alpha": alpha,
        "seed": seed,
        "num_iterations": args.num_iterations,
        "processes": trainer.accelerator.num_processes,
        "global_batch": distributed.global_batch(settings, trainer.accelerator.num_processes),
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
    if not main:
        return summary
    if not keep_checkpoints_after_training:
        # The final model is the output; checkpoints exist to resume an interrupted run (CPU grids save disk).
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        summary["checkpoints_removed_after_training"] = True
    write_json_atomic(summary_json, summary)
    return summary


def _rank_main(argv: list[str]) -> None:
    """One rank of a multi-process run: ``python -m pspo.train <spec.json>`` (pspo.distributed starts it)."""
    distributed.die_with_parent()
    kwargs = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        run_training(**kwargs)
    except PSPOError as error:
        print(distributed.ERROR_PREFIX.format(rank=distributed.rank()) + str(error), file=sys.stderr, flush=True)
        sys.exit(1)


__all__ = ["run_training", "weight_change"]

if __name__ == "__main__":
    _rank_main(sys.argv[1:])
