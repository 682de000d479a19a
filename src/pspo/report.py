"""Every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, from metrics files and training logs.

Tables are built with pandas from the per-job metrics JSON files that pspo.evaluation writes (themselves computed
from the per-sample files) and the training CSV logs; nothing is typed by hand except the paper's own reported
numbers in ``REPORTED``. Each Markdown/LaTeX table ends with its provenance; each CSV starts with a ``#`` line
holding it (read with ``pandas.read_csv(path, comment="#")``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from pspo import config as pspo_config
from pspo.config import FIGURES, table_names
from pspo.errors import PSPOError
from pspo.evaluation.metrics import wilson_interval
from pspo.io import atomic_path, read_json, write_text_atomic
from pspo.provenance import config_hash, git_commit, package_versions

# The paper's reported accuracies (%, T = 0; ../shared/PAPER.md). Keyed by the hub model id, so any config that
# trains that model gets the comparison; the method key is the objective (pspo at the paper's alpha = 0.1).
REPORTED = [
    # model, benchmark, objective, accuracy %
    ("Qwen/Qwen2.5-0.5B", "gsm8k", "pspo", 39.7),
    ("Qwen/Qwen2.5-0.5B", "gsm8k", "clip", 17.6),
    ("Qwen/Qwen2.5-1.5B", "gsm8k", "pspo", 59.4),
    ("Qwen/Qwen2.5-1.5B", "gsm8k", "clip", 37.8),
    ("Qwen/Qwen2-Math-1.5B", "gsm8k", "pspo", 79.9),
    ("Qwen/Qwen2-Math-1.5B", "math500", "pspo", 59.6),
]
BENCHMARK_LABELS = {"gsm8k": "GSM8K", "svamp": "SVAMP", "asdiv": "ASDiv", "math500": "MATH-500"}


# --- collecting ------------------------------------------------------------------------------------------------

def _job_identity(cfg: dict, job: pspo_config.EvalJob, trained: dict) -> dict:
    if job.tag == pspo_config.BASE:
        return {"run": "base", "run_id": "base", "objective": "base", "alpha": None, "seed": None, "label": "Base model"}
    train = trained[(job.model, job.tag)]
    return {
        "run": train.run, "run_id": train.run_id, "objective": cfg["runs"][train.run]["objective"],
        "alpha": train.alpha, "seed": train.seed, "label": pspo_config.run_label(cfg, train.run, train.alpha),
    }


def collect_metrics(cfg: dict) -> pd.DataFrame:
    """One row per evaluation job of the config, read from its metrics JSON."""
    rows = []
    trained = {(job.model, job.tag): job for job in pspo_config.train_jobs(cfg)}
    for job in pspo_config.eval_jobs(cfg):
        path = Path(cfg["results_dir"]) / "eval" / job.model / job.tag / f"{job.stem}.metrics.json"
        m = read_json(path)
        ci = m["accuracy_ci95"]
        row = {
            "model": job.model, "tag": job.tag, "benchmark": job.benchmark, "temperature": job.temperature,
            "n_samples": job.n_samples, **_job_identity(cfg, job, trained),
            "accuracy": m["accuracy"], "n": m["n"], "correct": m["correct"], "ci_low": ci[0], "ci_high": ci[1],
            "mean_completion_tokens": m["mean_completion_tokens"], "format_rate": m["format_rate"],
            "truncation_rate": m["truncation_rate"], "repetition_rate": m.get("repetition_rate"),
            "majority_accuracy": m.get("majority_accuracy"), "provenance": m.get("provenance", {}),
        }
        for k, v in (m.get("pass_at_k") or {}).items():
            row[f"pass@{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


def collect_train_logs(cfg: dict) -> pd.DataFrame:
    frames = []
    for job in pspo_config.train_jobs(cfg):
        path = Path(cfg["results_dir"]) / "train" / job.model / job.run_id / f"seed{job.seed}" / "log.csv"
        if not path.is_file():
            raise PSPOError(f"{path}: training log missing; rerun the workflow to train {job.tag}")
        df = pd.read_csv(path, comment="#")
        df["model"], df["run_id"], df["seed"] = job.model, job.run_id, job.seed
        df["label"] = pspo_config.run_label(cfg, job.run, job.alpha)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- statistics ------------------------------------------------------------------------------------------------

def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of accuracy over seeds, plus the Wilson 95% interval of the seeds pooled."""

    def agg(g: pd.DataFrame) -> pd.Series:
        correct, n = int(g["correct"].sum()), int(g["n"].sum())
        low, high = wilson_interval(correct, n)
        return pd.Series({
            "mean": 100 * g["accuracy"].mean(),
            "std": 100 * g["accuracy"].std(ddof=1) if len(g) > 1 else float("nan"),
            "seeds": len(g), "pooled_low": 100 * low, "pooled_high": 100 * high,
        })

    keys = ["model", "run_id", "label", "benchmark"]
    return df.groupby(keys, sort=False, dropna=False).apply(agg, include_groups=False).reset_index()


def _cell(mean: float, std: float, low: float | None = None, high: float | None = None) -> str:
    text = f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"
    if low is not None:
        text += f" [{low:.1f}, {high:.1f}]"
    return text


# --- tables ----------------------------------------------------------------------------------------------------

def table_hyperparameters(cfg: dict) -> pd.DataFrame:
    rows = []
    for model, spec in cfg["models"].items():
        for run in pspo_config.model_runs(cfg, model):
            alphas = pspo_config.run_alphas(cfg, run)
            s = pspo_config.grpo_settings(cfg, pspo_config.TrainJob(model, run, alphas[0], cfg["seeds"][0]))
            objective = s["objective"]
            rows.append({
                "model": spec["path"] or model, "method": pspo_config.run_label(cfg, run),
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


def _main_rows(cfg: dict, summary: pd.DataFrame, model: str, run_ids: list[str]) -> pd.DataFrame:
    benchmarks = cfg["evaluation"]["benchmarks"]
    rows = []
    for run_id in ["base"] + run_ids:
        sub = summary[(summary.model == model) & (summary.run_id == run_id)]
        if sub.empty:
            continue
        row = {"method": sub.label.iloc[0], "run_id": run_id, "seeds": int(sub.seeds.max())}
        for b in benchmarks:
            hit = sub[sub.benchmark == b]
            if not hit.empty:
                h = hit.iloc[0]
                row[BENCHMARK_LABELS[b]] = _cell(h["mean"], h["std"], h["pooled_low"], h["pooled_high"])
                row[f"{b}_mean"], row[f"{b}_std"] = h["mean"], h["std"]
                row[f"{b}_low"], row[f"{b}_high"] = h["pooled_low"], h["pooled_high"]
        rows.append(row)
    return pd.DataFrame(rows)


def _main_run_ids(cfg: dict, model: str) -> list[str]:
    out = []
    for run in pspo_config.model_runs(cfg, model):
        alphas = pspo_config.run_alphas(cfg, run)
        alpha = cfg["main_alpha"] if alphas != [None] else None
        out.append(pspo_config.run_id(run, alpha))
    return out


def table_alpha_ablation(cfg: dict, summary: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for model in cfg["models"]:
        ids = [
            pspo_config.run_id(run, a)
            for run in pspo_config.model_runs(cfg, model)
            for a in pspo_config.run_alphas(cfg, run)
            if a is not None or cfg["runs"][run]["objective"] == "noclip"
        ]
        df = _main_rows(cfg, summary, model, ids)
        if not df.empty:
            df.insert(0, "model", model)
            frames.append(df[df.run_id != "base"])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table_response_quality(df: pd.DataFrame) -> pd.DataFrame:
    t0 = df[df.temperature == 0]
    cols = ["mean_completion_tokens", "format_rate", "truncation_rate", "repetition_rate"]
    out = t0.groupby(["model", "run_id", "label", "benchmark"], sort=False)[cols].mean().reset_index()
    for c in cols[1:]:
        out[c] = 100 * out[c]
    return out.rename(columns={
        "mean_completion_tokens": "mean length (tokens)", "format_rate": "format %",
        "truncation_rate": "truncated %", "repetition_rate": "repetitive %",
    })


def table_sampling(df: pd.DataFrame) -> pd.DataFrame:
    sampled = df[df.temperature > 0]
    if sampled.empty:
        return pd.DataFrame()
    pass_cols = sorted([c for c in sampled.columns if c.startswith("pass@")], key=lambda c: int(c[5:]))
    cols = pass_cols + ["majority_accuracy"]
    out = sampled.groupby(["model", "run_id", "label", "benchmark", "temperature"], sort=False)[cols].mean().reset_index()
    for c in cols:
        out[c] = 100 * out[c]
    return out.rename(columns={"majority_accuracy": f"maj@{int(sampled.n_samples.max())}"})


def table_reported(cfg: dict, summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for hub_id, benchmark, objective, reported in REPORTED:
        models = [m for m, spec in cfg["models"].items() if spec["path"] == hub_id]
        reproduced, std, n_seeds = None, None, 0
        for model in models:
            run_ids = [
                pspo_config.run_id(run, cfg["main_alpha"] if objective == "pspo" else None)
                for run in pspo_config.model_runs(cfg, model)
                if cfg["runs"][run]["objective"] == objective
                and (objective != "noclip" or cfg["runs"][run]["grpo"].get("num_iterations", 1) == 1)
            ]
            hit = summary[(summary.model == model) & summary.run_id.isin(run_ids[:1]) & (summary.benchmark == benchmark)]
            if not hit.empty:
                reproduced, std, n_seeds = hit["mean"].iloc[0], hit["std"].iloc[0], int(hit.seeds.iloc[0])
        rows.append({
            "model": hub_id, "benchmark": BENCHMARK_LABELS[benchmark],
            "method": {"pspo": "GR-PSPO", "clip": "GRPO-clip"}[objective], "reported": reported,
            "reproduced": reproduced, "std": std, "seeds": n_seeds,
            "difference": None if reproduced is None else reproduced - reported,
            "note": "" if reproduced is not None else "not run by this config",
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


# --- writing ---------------------------------------------------------------------------------------------------

def _provenance_line(prov: dict) -> str:
    v = prov["versions_at_report"]
    return (f"config {prov['config_hash']}, commit {prov['commit']}, torch {v.get('torch')}, "
            f"transformers {v.get('transformers')}, trl {v.get('trl')}, vllm {v.get('vllm')}, pspo {v.get('pspo')}")


def write_table(df: pd.DataFrame, stem: Path, title: str, prov: dict) -> None:
    """Write ``stem``.csv/.md/.tex atomically; numeric-only helper columns stay in the CSV only."""
    line = _provenance_line(prov)
    shown = df[[c for c in df.columns if not c.endswith(("_mean", "_std", "_low", "_high"))]]
    csv = f"# {title}; provenance: {json.dumps(prov, sort_keys=True, default=str)}\n" + df.to_csv(index=False)
    md = f"### {title}\n\n" + (shown.to_markdown(index=False, floatfmt=".4g") if not shown.empty else "(no rows)")
    md += f"\n\n<sub>{line}</sub>\n"
    tex = shown.to_latex(index=False, float_format=lambda x: f"{x:.4g}", na_rep="--", caption=title, escape=True)
    tex = f"% {line}\n" + tex
    for ext, text in (("csv", csv), ("md", md), ("tex", tex)):
        write_text_atomic(stem.with_suffix(f".{ext}"), text)


def build_report(cfg: dict, index_path: str | Path) -> None:
    out = Path(cfg["results_dir"]) / "report"
    df = collect_metrics(cfg)
    summary = summarise(df[df.temperature == 0])
    prov = run_provenance(cfg, df)
    tables: dict[str, tuple[str, pd.DataFrame]] = {
        "hyperparameters": ("Table 1: hyperparameters per model and method (from the resolved config)",
                            table_hyperparameters(cfg)),
    }
    for model in cfg["models"]:
        main = _main_rows(cfg, summary, model, _main_run_ids(cfg, model))
        tables[f"main_{model}"] = (
            f"Accuracy (%) at T=0 for {cfg['models'][model]['path'] or model}: mean ± std over seeds "
            "[Wilson 95% interval, seeds pooled]", main)
    tables["alpha_ablation"] = ("Alpha ablation: GR-PSPO accuracy (%) per alpha, with the noclip controls",
                                table_alpha_ablation(cfg, summary))
    tables["response_quality"] = ("Response quality at T=0 (means over seeds)", table_response_quality(df))
    tables["reported_vs_reproduced"] = ("The paper's reported accuracies (%) beside this run's", table_reported(cfg, summary))
    tables["provenance"] = ("Provenance of every number in this report", table_provenance(prov))
    if "sampling" in table_names(cfg):
        tables["sampling"] = ("Sampled evaluation: pass@k and majority vote (%), means over seeds", table_sampling(df))
    for name, (title, table) in tables.items():
        write_table(table, out / "tables" / name, title, prov)
    figure_training_curves(collect_train_logs(cfg), out / "figures" / "training_curves")
    figure_accuracy(cfg, summary, out / "figures" / "accuracy")
    write_index(cfg, Path(index_path), tables, prov)


def write_index(cfg: dict, path: Path, tables: dict, prov: dict) -> None:
    lines = [f"# Results: {cfg.get('description') or cfg['results_dir']}", "",
             f"Provenance: {_provenance_line(prov)}", "", "## Tables", ""]
    for name, (title, _) in tables.items():
        lines.append(f"- {title}: [md](report/tables/{name}.md) · [csv](report/tables/{name}.csv) · "
                     f"[tex](report/tables/{name}.tex)")
    lines += ["", "## Figures", ""]
    for name in FIGURES:
        lines.append(f"- {name}: [png](report/figures/{name}.png) · [pdf](report/figures/{name}.pdf)")
    lines += ["", "Per-sample completions: `eval/<model>/<run>_seed<k>/<benchmark>_T<t>_n<n>.samples.jsonl`; "
              "training logs: `train/<model>/<run>/seed<k>/log.csv`.", ""]
    for model in cfg["models"]:
        table = tables[f"main_{model}"][1]
        lines += [f"## {model}", "", table.drop(columns=[c for c in table.columns if "_" in c and c != "run_id"])
                  .to_markdown(index=False) if not table.empty else "(no rows)", ""]
    write_text_atomic(path, "\n".join(lines))


# --- figures ---------------------------------------------------------------------------------------------------

def _save(fig, stem: Path, paths: tuple[Path, ...] = ()) -> None:
    """Save ``fig`` atomically as ``stem``.png and ``stem``.pdf (or to the explicit ``paths``)."""
    for path in paths or (stem.with_suffix(".png"), stem.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")


def figure_surrogate(png: str | Path, pdf: str | Path, epsilon: float = 0.2, alpha: float = 0.2) -> None:
    """The paper's Figure 1, computed with autograd from the objectives the trainer uses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pspo import objectives as obj

    r = torch.linspace(0.05, 2.5, 600, dtype=torch.float64)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for col, a in enumerate((1.0, -1.0)):
        adv = torch.full_like(r, a)
        curves = {
            f"GRPO-clip (ε={epsilon:g})": lambda lr: obj.clip_loss(lr, adv, epsilon, epsilon),
            f"GR-PSPO (α={alpha:g})": lambda lr: obj.pspo_loss(lr, adv, alpha),
            "GRPO-sigmoid (SAPO)": lambda lr: obj.sigmoid_loss(lr, adv, 1.0, 1.05),
            "no clip (r A)": lambda lr: obj.noclip_loss(lr, adv),
        }
        for name, loss_fn in curves.items():
            ratio = r.clone().requires_grad_(True)
            surrogate = -loss_fn(torch.log(ratio))
            (grad,) = torch.autograd.grad(surrogate.sum(), ratio)
            style = "--" if name.startswith("no clip") else "-"
            axes[0, col].plot(r, surrogate.detach(), style, label=name)
            axes[1, col].plot(r, grad, style, label=name)
        for row in (0, 1):
            ax = axes[row, col]
            ax.axvspan(1 - epsilon, 1 + epsilon, color="grey", alpha=0.12)
            ax.axvline(1.0, color="grey", lw=0.6)
            ax.grid(alpha=0.3)
        axes[0, col].set_title(f"A = {a:+g}")
        axes[1, col].set_xlabel("ratio r = π_θ / π_old")
    axes[0, 0].set_ylabel("surrogate L(r)")
    axes[1, 0].set_ylabel("dL/dr")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Figure 1: per-token surrogate and its gradient (shaded: [1-ε, 1+ε])")
    fig.tight_layout()
    _save(fig, Path(png), (Path(png), Path(pdf)))
    plt.close(fig)


# Columns of pspo.train's CSV log; the clip fraction exists only for clip runs (NaN, so not drawn, elsewhere).
TRAINING_CURVE_METRICS = ("reward", "objective/ratio_std", "completions/mean_length", "objective/clip_fraction")


def figure_training_curves(logs: pd.DataFrame, stem: Path) -> None:
    """Mean ± std over seeds of the logged training metrics against the optimiser step, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in TRAINING_CURVE_METRICS if not logs.empty and m in logs.columns]
    models = list(logs.model.unique()) if not logs.empty else []
    fig, axes = plt.subplots(max(len(models), 1), max(len(metrics), 1), figsize=(4 * max(len(metrics), 1),
                             3 * max(len(models), 1)), squeeze=False)
    for i, model in enumerate(models):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            sub = logs[logs.model == model]
            for label, g in sub.groupby("label", sort=False):
                stats = g.dropna(subset=[metric]).groupby("step")[metric].agg(["mean", "std"]).reset_index()
                if stats.empty:
                    continue
                ax.plot(stats["step"], stats["mean"], label=label)
                ax.fill_between(stats["step"], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), alpha=0.2)
            ax.set_title(f"{model}: {metric}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    if models and metrics:
        axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    _save(fig, stem)
    plt.close(fig)


def figure_accuracy(cfg: dict, summary: pd.DataFrame, stem: Path) -> None:
    """Accuracy per benchmark with the pooled Wilson 95% interval, one panel per model (main-alpha runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(cfg["models"])
    benchmarks = cfg["evaluation"]["benchmarks"]
    fig, axes = plt.subplots(1, len(models), figsize=(max(6, 2.2 * len(benchmarks)) * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        run_ids = ["base"] + _main_run_ids(cfg, model)
        width = 0.8 / len(run_ids)
        x = np.arange(len(benchmarks))
        for k, run_id in enumerate(run_ids):
            sub = summary[(summary.model == model) & (summary.run_id == run_id)].set_index("benchmark")
            if sub.empty:
                continue
            mean = np.array([sub["mean"].get(b, np.nan) for b in benchmarks])
            low = np.array([sub["pooled_low"].get(b, np.nan) for b in benchmarks])
            high = np.array([sub["pooled_high"].get(b, np.nan) for b in benchmarks])
            ax.bar(x + (k - (len(run_ids) - 1) / 2) * width, mean, width, yerr=[mean - low, high - mean],
                   capsize=2, label=sub["label"].iloc[0])
        ax.set_xticks(x, [BENCHMARK_LABELS[b] for b in benchmarks])
        ax.set_ylabel("accuracy % (T=0)")
        ax.set_title(model)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, stem)
    plt.close(fig)


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="pspo report", description="Build every table and figure of a finished run.")
    p.add_argument("--configfile", required=True)
    a = p.parse_args(argv)
    cfg = pspo_config.load_config(a.configfile)
    figure_surrogate(Path(cfg["results_dir"]) / "report/figures/figure1_surrogate.png",
                     Path(cfg["results_dir"]) / "report/figures/figure1_surrogate.pdf",
                     cfg["report"]["figure1_epsilon"], cfg["report"]["figure1_alpha"])
    build_report(cfg, Path(cfg["results_dir"]) / "index.md")
    print(Path(cfg["results_dir"]) / "index.md")
    return 0
