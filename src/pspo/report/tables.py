"""The report's tables, as pandas frames from the collected metrics (:mod:`pspo.report.collect`), and their writer.

Nothing is typed by hand: the paper's own reported numbers are read from ``reported.csv``. Each Markdown/LaTeX table ends
with its provenance; each CSV starts with a ``#`` line holding it (read with ``pandas.read_csv(path, comment="#")``).
Per-run tables carry a ``trained`` column; their Markdown/LaTeX cells read NOT_TRAINED for a run without learning
signal (the CSV keeps the numbers).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from pspo import grid, layout
from pspo.benchmarks import LABELS
from pspo.config import run_label
from pspo.io import write_text_atomic
from pspo.layout import BASE, TABLE_EXTS
from pspo.provenance import config_hash, git_commit, package_versions
from pspo.report.collect import NOT_TRAINED, accuracy_cell

# Numeric columns that describe a table row rather than what the run measured: never replaced by NOT_TRAINED.
_ROW_DESCRIPTORS = ("temperature", "reported", "seeds", "n_samples")

REPORTED_FILE = Path(__file__).with_name("reported.csv")  # the paper's reported accuracies, with their source


def reported() -> list[tuple[str, str, str, float]]:
    """(hub model id, benchmark, objective, accuracy %) for each number the paper reports (REPORTED_FILE)."""
    lines = [line for line in REPORTED_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return [(r["model"], r["benchmark"], r["objective"], float(r["accuracy"])) for r in csv.DictReader(lines)]


def table_hyperparameters(cfg: dict) -> pd.DataFrame:
    rows = []
    for model, spec in cfg["models"].items():
        for run in grid.model_runs(cfg, model):
            alphas = grid.run_alphas(cfg, run)
            job = grid.TrainJob(model, run, alphas[0], cfg["seeds"][0])
            s, objective = grid.grpo_settings(cfg, job), job.objective(cfg)
            rows.append({
                "model": spec["path"] or model, "method": run_label(cfg, run),
                "objective": objective, "mu": s.get("num_iterations", 1),
                "epsilon": s.get("epsilon", 0.2) if objective == "clip" else None,
                "alpha": ", ".join(f"{a:g}" for a in alphas) if objective == "pspo" else None,
                "tau_pos/neg": f"{s.get('sapo_temperature_pos', 1.0)}/{s.get('sapo_temperature_neg', 1.05)}"
                if objective == "sigmoid" else None,
                "learning_rate": s.get("learning_rate"),
                "completions/step": s.get("per_device_train_batch_size", 8) * s.get("gradient_accumulation_steps", 1),
                "group_size": s.get("num_generations"),
                "beta": s.get("beta", 0.0), "warmup_steps": s.get("warmup_steps"),
                "max_steps" if "max_steps" in s else "epochs": s.get("max_steps", s.get("num_train_epochs")),
                "temperature": s.get("temperature"), "top_p": s.get("top_p"),
                "max_completion_length": s.get("max_completion_length"),
                "seeds": len(cfg["seeds"]),
            })
    return pd.DataFrame(rows)


def main_rows(cfg: dict, summary: pd.DataFrame, model: str, run_ids: list[str]) -> pd.DataFrame:
    benchmarks = cfg["evaluation"]["benchmarks"]
    rows = []
    for run_id in ["base"] + run_ids:
        sub = summary[(summary.model == model) & (summary.run_id == run_id)]
        if sub.empty:
            continue
        row = {"method": sub.label.iloc[0], "run_id": run_id, "seeds": int(sub.seeds.max()),
               "trained": bool(sub.trained.all())}
        for b in benchmarks:
            hit = sub[sub.benchmark == b]
            if not hit.empty:
                h = hit.iloc[0]
                row[LABELS[b]] = accuracy_cell(h)
                row[f"{b}_mean"], row[f"{b}_std"] = h["mean"], h["std"]
                row[f"{b}_low"], row[f"{b}_high"] = h["pooled_low"], h["pooled_high"]
        rows.append(row)
    return pd.DataFrame(rows)


def main_run_ids(cfg: dict, model: str) -> list[str]:
    out = []
    for run in grid.model_runs(cfg, model):
        alphas = grid.run_alphas(cfg, run)
        alpha = cfg["main_alpha"] if alphas != [None] else None
        out.append(grid.run_id(run, alpha))
    return out


def table_alpha_ablation(cfg: dict, summary: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for model in cfg["models"]:
        ids = [
            grid.run_id(run, a)
            for run in grid.model_runs(cfg, model)
            for a in grid.run_alphas(cfg, run)
            if a is not None or cfg["runs"][run]["objective"] == "noclip"
        ]
        df = main_rows(cfg, summary, model, ids)
        if not df.empty:
            df.insert(0, "model", model)
            frames.append(df[df.run_id != "base"])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def changed_vs_base(df: pd.DataFrame, samples: dict) -> pd.Series:
    """Per T=0 row: the fraction of its greedy completions that differ from the base model's on the same question.
    0 for a trained run means training did not change what the model says (NaN for the base model itself).
    ``samples`` maps each EvalJob to its samples file."""
    from pspo.io import read_jsonl

    def completions(model: str, tag: str, benchmark: str) -> dict:
        greedy = grid.EvalJob(model, tag, benchmark, 0.0, 1)
        return {r["id"]: r["completion"] for r in read_jsonl(samples[greedy])}

    base_cache: dict = {}
    out = []
    for row in df.itertuples():
        if row.temperature != 0 or row.tag == BASE:
            out.append(float("nan"))
            continue
        key = (row.model, row.benchmark)
        if key not in base_cache:
            base_cache[key] = completions(row.model, BASE, row.benchmark)
        base, mine = base_cache[key], completions(row.model, row.tag, row.benchmark)
        out.append(sum(mine[i] != base.get(i) for i in mine) / max(len(mine), 1))
    return pd.Series(out, index=df.index)


def table_response_quality(df: pd.DataFrame) -> pd.DataFrame:
    t0 = df[df.temperature == 0]
    cols = ["mean_completion_tokens", "format_rate", "truncation_rate", "repetition_rate", "changed_vs_base"]
    cols = [c for c in cols if c in t0.columns]
    groups = t0.groupby(["model", "run_id", "label", "benchmark"], sort=False)
    out = groups[cols].mean()
    out["trained"] = groups["trained"].all()
    out = out.reset_index()
    for c in cols[1:]:
        out[c] = 100 * out[c]
    return out.rename(columns={
        "mean_completion_tokens": "mean length (tokens)", "format_rate": "format %",
        "truncation_rate": "truncated %", "repetition_rate": "repetitive %",
        "changed_vs_base": "% of greedy answers changed vs base",
    })


def table_sampling(df: pd.DataFrame) -> pd.DataFrame:
    sampled = df[df.temperature > 0]
    if sampled.empty:
        return pd.DataFrame()
    pass_cols = sorted([c for c in sampled.columns if c.startswith("pass@")], key=lambda c: int(c[5:]))
    cols = pass_cols + ["majority_accuracy"]
    groups = sampled.groupby(["model", "run_id", "label", "benchmark", "temperature"], sort=False)
    out = groups[cols].mean()
    out["trained"] = groups["trained"].all()
    out = out.reset_index()
    for c in cols:
        out[c] = 100 * out[c]
    return out.rename(columns={"majority_accuracy": f"maj@{int(sampled.n_samples.max())}"})


# The authors' released script ran "clip" with epsilon 0 and lr 5e-7 (../shared/PAPER.md); a run of that name is
# compared with the paper's GRPO-clip numbers too.
RELEASED_CLIP_RUN = "clip-released"


def _reported_hit(cfg: dict, summary: pd.DataFrame, model: str, benchmark: str, objective: str,
                  released: bool) -> pd.DataFrame:
    runs = [run for run in grid.model_runs(cfg, model) if (run == RELEASED_CLIP_RUN) == released
            and cfg["runs"][run]["objective"] == objective
            and (objective != "noclip" or cfg["runs"][run]["grpo"].get("num_iterations", 1) == 1)]
    run_ids = [grid.run_id(run, cfg["main_alpha"] if objective == "pspo" else None) for run in runs]
    return summary[(summary.model == model) & summary.run_id.isin(run_ids[:1]) & (summary.benchmark == benchmark)]


def table_reported(cfg: dict, summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for hub_id, benchmark, objective, reported_accuracy in reported():
        models = [m for m, spec in cfg["models"].items() if spec["path"] == hub_id]
        variants = [("GR-PSPO" if objective == "pspo" else "GRPO-clip", False)]
        if objective == "clip" and any(RELEASED_CLIP_RUN in grid.model_runs(cfg, m) for m in models):
            variants.append(("GRPO-clip as released (eps=0, lr 5e-7)", True))
        for method, released in variants:
            reproduced, std, n_seeds, trained = None, None, 0, None
            for model in models:
                hit = _reported_hit(cfg, summary, model, benchmark, objective, released)
                if not hit.empty:
                    reproduced, std, n_seeds = hit["mean"].iloc[0], hit["std"].iloc[0], int(hit.seeds.iloc[0])
                    trained = bool(hit.trained.iloc[0])
            rows.append({
                "model": hub_id, "benchmark": LABELS[benchmark], "method": method, "reported": reported_accuracy,
                "reproduced": reproduced, "std": std, "seeds": n_seeds,
                "difference": None if reproduced is None else reproduced - reported_accuracy, "trained": trained,
                "note": "not run by this config" if reproduced is None else "" if trained else NOT_TRAINED,
            })
    return pd.DataFrame(rows)


def run_provenance(cfg: dict, df: pd.DataFrame) -> dict[str, Any]:
    data_hashes: dict[str, str] = {}
    versions: dict[str, Any] = {}
    for prov in df["provenance"]:
        data_hashes.update(prov.get("data_sha256") or {})
        for k, v in (prov.get("versions") or {}).items():
            versions.setdefault(k, set()).add(str(v))
    return {
        "config_hash": config_hash(cfg),
        "commit": git_commit(),
        "versions_at_report": package_versions(),
        "versions_in_metrics": {k: sorted(v) for k, v in versions.items()},
        "data_sha256": data_hashes,
    }


def table_provenance(prov: dict) -> pd.DataFrame:
    rows = [("config_hash", prov["config_hash"]), ("commit", prov["commit"])]
    rows += [(f"version: {k}", ", ".join(v)) for k, v in prov["versions_in_metrics"].items()]
    rows += [(f"data sha256: {k}", v) for k, v in sorted(prov["data_sha256"].items())]
    return pd.DataFrame(rows, columns=["item", "value"])


# --- writing: CSV, Markdown, LaTeX


def provenance_line(prov: dict) -> str:
    v = prov["versions_at_report"]
    return (f"config {prov['config_hash']}, commit {prov['commit']}, torch {v.get('torch')}, "
            f"transformers {v.get('transformers')}, trl {v.get('trl')}, vllm {v.get('vllm')}, pspo {v.get('pspo')}")


def _shown(df: pd.DataFrame) -> pd.DataFrame:
    """The Markdown/LaTeX view: no numeric helper columns, and a not-trained run's measured numbers read NOT_TRAINED
    (formatted as text, so that a column of numbers and that text keeps its number format)."""
    shown = df[[c for c in df.columns if not c.endswith(("_mean", "_std", "_low", "_high"))]]
    if "trained" not in shown.columns or not shown["trained"].eq(False).any():
        return shown
    untrained = shown["trained"].eq(False)
    shown = shown.copy()
    for c in shown.columns:
        col = shown[c]
        if c in _ROW_DESCRIPTORS or c == "trained" or not pd.api.types.is_numeric_dtype(col):
            continue
        shown[c] = [NOT_TRAINED if u else v if pd.isna(v) else f"{v:.4g}" for u, v in zip(untrained, col)]
    return shown


def write_table(df: pd.DataFrame, results_dir: str, name: str, title: str, prov: dict) -> None:
    """Write table ``name`` in each of the layout's TABLE_EXTS, atomically; numeric-only helper columns stay in the
    CSV only."""
    line = provenance_line(prov)
    shown = _shown(df)
    csv = f"# {title}; provenance: {json.dumps(prov, sort_keys=True, default=str)}\n" + df.to_csv(index=False)
    md = f"### {title}\n\n" + (shown.to_markdown(index=False, floatfmt=".4g") if not shown.empty else "(no rows)")
    md += f"\n\n<sub>{line}</sub>\n"
    tex = shown.to_latex(index=False, float_format=lambda x: f"{x:.4g}", na_rep="--", caption=title, escape=True)
    texts = {"csv": csv, "md": md, "tex": f"% {line}\n" + tex}
    for ext in TABLE_EXTS:
        write_text_atomic(layout.path(results_dir, layout.TABLE, name=name, ext=ext), texts[ext])
