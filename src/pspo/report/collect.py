"""Reading a finished grid back: one row per evaluation from its metrics file, each training run's status and log,
and the statistics over seeds the tables are made of.

The input files come from the caller (the report rule's ``snakemake.input``, or :func:`pspo.report.plan.report_inputs`),
listed in the order of the config's jobs; nothing here rebuilds a path. A training run whose summary.json says it had
no learning signal (pspo.train's ``"trained": false``) ended equal to its base model, so its accuracy is not a result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pspo import grid
from pspo.config import run_label
from pspo.errors import PSPOError
from pspo.evaluation.metrics import wilson_interval
from pspo.io import read_json
from pspo.layout import BASE

NOT_TRAINED = "not trained (no learning signal)"


def _job_identity(cfg: dict, job: grid.EvalJob, trained: dict) -> dict:
    if job.tag == BASE:
        return {"run": "base", "run_id": "base", "objective": "base", "alpha": None, "seed": None, "label": "Base model"}
    train = trained[(job.model, job.tag)]
    return {
        "run": train.run, "run_id": train.run_id, "objective": cfg["runs"][train.run]["objective"],
        "alpha": train.alpha, "seed": train.seed, "label": run_label(cfg, train.run, train.alpha),
    }


def run_trained(summary: dict) -> bool:
    """False only when pspo.train found no learning signal; summaries older than that check count as trained."""
    return summary.get("trained", True) is not False


def paired(jobs: list, paths, what: str) -> list[tuple[Any, Path]]:
    """The input files of one kind beside the jobs they belong to (Snakemake lists them in the jobs' order)."""
    paths = [Path(p) for p in paths]
    if len(paths) != len(jobs):
        raise PSPOError(f"the report got {len(paths)} {what} files for the config's {len(jobs)} jobs; run it "
                        "through the workflow (or `pspo report`), which lists one per job")
    return list(zip(jobs, paths))


def collect_train_status(cfg: dict, summaries) -> dict[tuple[str, str, int], dict]:
    """Per training job (model, run_id, seed): ``trained`` and ``warnings``, read from its summary.json."""
    out = {}
    for job, path in paired(grid.train_jobs(cfg), summaries, "training summary"):
        if not path.is_file():
            raise PSPOError(f"{path}: training summary missing; rerun the workflow to train {job.tag}")
        summary = read_json(path)
        out[(job.model, job.run_id, job.seed)] = {"trained": run_trained(summary),
                                                  "warnings": list(summary.get("warnings") or [])}
    return out


def collect_metrics(cfg: dict, metrics_files, status: dict) -> pd.DataFrame:
    """One row per evaluation job of the config, read from its metrics JSON; ``trained`` from ``status``
    (:func:`collect_train_status`; the base model counts as trained)."""
    rows = []
    trained = {(job.model, job.tag): job for job in grid.train_jobs(cfg)}
    for job, path in paired(grid.eval_jobs(cfg), metrics_files, "metrics"):
        m = read_json(path)
        ci = m["accuracy_ci95"]
        train = trained.get((job.model, job.tag))  # None: the base model
        row = {
            "model": job.model, "tag": job.tag, "benchmark": job.benchmark, "temperature": job.temperature,
            "n_samples": job.n_samples, **_job_identity(cfg, job, trained),
            "trained": train is None or status[(train.model, train.run_id, train.seed)]["trained"],
            "accuracy": m["accuracy"], "n": m["n"], "correct": m["correct"], "ci_low": ci[0], "ci_high": ci[1],
            "mean_completion_tokens": m["mean_completion_tokens"], "format_rate": m["format_rate"],
            "truncation_rate": m["truncation_rate"], "repetition_rate": m.get("repetition_rate"),
            "majority_accuracy": m.get("majority_accuracy"), "provenance": m.get("provenance", {}),
        }
        for k, v in (m.get("pass_at_k") or {}).items():
            row[f"pass@{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def collect_train_logs(cfg: dict, log_files) -> pd.DataFrame:
    frames = []
    for job, path in paired(grid.train_jobs(cfg), log_files, "training log"):
        if not path.is_file():
            raise PSPOError(f"{path}: training log missing; rerun the workflow to train {job.tag}")
        df = pd.read_csv(path, comment="#")
        df["model"], df["run_id"], df["seed"] = job.model, job.run_id, job.seed
        df["label"] = run_label(cfg, job.run, job.alpha)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- statistics


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of accuracy over seeds, plus the Wilson 95% interval of the seeds pooled, and how many of the
    seeds had no learning signal (``trained``: every seed learned)."""

    def agg(g: pd.DataFrame) -> pd.Series:
        correct, n = int(g["correct"].sum()), int(g["n"].sum())
        low, high = wilson_interval(correct, n)
        return pd.Series({
            "mean": 100 * g["accuracy"].mean(),
            "std": 100 * g["accuracy"].std(ddof=1) if len(g) > 1 else float("nan"),
            "seeds": len(g), "pooled_low": 100 * low, "pooled_high": 100 * high,
            "untrained_seeds": int(g["trained"].eq(False).sum()),
        })

    keys = ["model", "run_id", "label", "benchmark"]
    out = df.groupby(keys, sort=False, dropna=False).apply(agg, include_groups=False).reset_index()
    out["trained"] = out["untrained_seeds"] == 0
    return out


def _cell(mean: float, std: float, low: float | None = None, high: float | None = None) -> str:
    text = f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"
    if low is not None:
        text += f" [{low:.1f}, {high:.1f}]"
    return text


def accuracy_cell(h: pd.Series) -> str:
    """A summary row as text: NOT_TRAINED when no seed learned, a note when only some did."""
    untrained, seeds = int(h["untrained_seeds"]), int(h["seeds"])
    if untrained == seeds:
        return NOT_TRAINED
    text = _cell(h["mean"], h["std"], h["pooled_low"], h["pooled_high"])
    return text + (f" ({untrained} of {seeds} seeds not trained)" if untrained else "")
