"""Every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, from metrics files and training logs.

Tables are built with pandas from the per-job metrics JSON files that pspo.evaluation writes (themselves computed
from the per-sample files) and the training CSV logs; nothing is typed by hand except the paper's own reported
numbers in ``REPORTED``. Each Markdown/LaTeX table ends with its provenance; each CSV starts with a ``#`` line
holding it (read with ``pandas.read_csv(path, comment="#")``).

A training run whose summary.json says it had no learning signal (pspo.train's ``"trained": false``) ended equal to
its base model, so its accuracy is not a result: per-run tables carry a ``trained`` column, their Markdown/LaTeX
cells read "not trained (no learning signal)" (the CSV keeps the numbers), and index.md lists every run's warnings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from pspo import config as pspo_config
from pspo import control
from pspo.config import figure_names, table_names
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
BENCHMARK_LABELS = {"gsm8k": "GSM8K", "svamp": "SVAMP", "asdiv": "ASDiv", "math500": "MATH-500",
                    "arith": "Arithmetic (CPU stand-in)"}
NOT_TRAINED = "not trained (no learning signal)"
# Numeric columns that describe a table row rather than what the run measured: never replaced by NOT_TRAINED.
_ROW_DESCRIPTORS = ("temperature", "reported", "seeds", "n_samples")


# --- collecting ------------------------------------------------------------------------------------------------

def _job_identity(cfg: dict, job: pspo_config.EvalJob, trained: dict) -> dict:
    if job.tag == pspo_config.BASE:
        return {"run": "base", "run_id": "base", "objective": "base", "alpha": None, "seed": None, "label": "Base model"}
    train = trained[(job.model, job.tag)]
    return {
        "run": train.run, "run_id": train.run_id, "objective": cfg["runs"][train.run]["objective"],
        "alpha": train.alpha, "seed": train.seed, "label": pspo_config.run_label(cfg, train.run, train.alpha),
    }


def _eval_prefix(cfg: dict, job: pspo_config.EvalJob) -> str:
    """``eval/<model>/<tag>/<stem>``: append ``.metrics.json`` or ``.samples.jsonl`` (the stem holds dots)."""
    return str(Path(cfg["results_dir"]) / "eval" / job.model / job.tag / job.stem)


def _train_dir(cfg: dict, job: pspo_config.TrainJob) -> Path:
    return Path(cfg["results_dir"]) / "train" / job.model / job.run_id / f"seed{job.seed}"


def run_trained(summary: dict) -> bool:
    """False only when pspo.train found no learning signal; summaries older than that check count as trained."""
    return summary.get("trained", True) is not False


def collect_train_status(cfg: dict) -> dict[tuple[str, str, int], dict]:
    """Per training job (model, run_id, seed): ``trained`` and ``warnings``, read from its summary.json."""
    out = {}
    for job in pspo_config.train_jobs(cfg):
        path = _train_dir(cfg, job) / "summary.json"
        if not path.is_file():
            raise PSPOError(f"{path}: training summary missing; rerun the workflow to train {job.tag}")
        summary = read_json(path)
        out[(job.model, job.run_id, job.seed)] = {"trained": run_trained(summary),
                                                  "warnings": list(summary.get("warnings") or [])}
    return out


def collect_metrics(cfg: dict, status: dict | None = None) -> pd.DataFrame:
    """One row per evaluation job of the config, read from its metrics JSON; ``trained`` from ``status``
    (:func:`collect_train_status`, read when not given; the base model counts as trained)."""
    status = collect_train_status(cfg) if status is None else status
    rows = []
    trained = {(job.model, job.tag): job for job in pspo_config.train_jobs(cfg)}
    for job in pspo_config.eval_jobs(cfg):
        m = read_json(f"{_eval_prefix(cfg, job)}.metrics.json")
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


def collect_train_logs(cfg: dict) -> pd.DataFrame:
    frames = []
    for job in pspo_config.train_jobs(cfg):
        path = _train_dir(cfg, job) / "log.csv"
        if not path.is_file():
            raise PSPOError(f"{path}: training log missing; rerun the workflow to train {job.tag}")
        df = pd.read_csv(path, comment="#")
        df["model"], df["run_id"], df["seed"] = job.model, job.run_id, job.seed
        df["label"] = pspo_config.run_label(cfg, job.run, job.alpha)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- statistics ------------------------------------------------------------------------------------------------

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


def _accuracy_cell(h: pd.Series) -> str:
    """A summary row as text: NOT_TRAINED when no seed learned, a note when only some did."""
    untrained, seeds = int(h["untrained_seeds"]), int(h["seeds"])
    if untrained == seeds:
        return NOT_TRAINED
    text = _cell(h["mean"], h["std"], h["pooled_low"], h["pooled_high"])
    return text + (f" ({untrained} of {seeds} seeds not trained)" if untrained else "")


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
        row = {"method": sub.label.iloc[0], "run_id": run_id, "seeds": int(sub.seeds.max()),
               "trained": bool(sub.trained.all())}
        for b in benchmarks:
            hit = sub[sub.benchmark == b]
            if not hit.empty:
                h = hit.iloc[0]
                row[BENCHMARK_LABELS[b]] = _accuracy_cell(h)
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


def changed_vs_base(cfg: dict, df: pd.DataFrame) -> pd.Series:
    """Per T=0 row: the fraction of its greedy completions that differ from the base model's on the same question.
    0 for a trained run means training did not change what the model says (NaN for the base model itself)."""
    from pspo.io import read_jsonl

    def completions(model: str, tag: str, benchmark: str) -> dict:
        greedy = pspo_config.EvalJob(model, tag, benchmark, 0.0, 1)
        return {r["id"]: r["completion"] for r in read_jsonl(f"{_eval_prefix(cfg, greedy)}.samples.jsonl")}

    base_cache: dict = {}
    out = []
    for row in df.itertuples():
        if row.temperature != 0 or row.tag == pspo_config.BASE:
            out.append(float("nan"))
            continue
        key = (row.model, row.benchmark)
        if key not in base_cache:
            base_cache[key] = completions(row.model, pspo_config.BASE, row.benchmark)
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
    runs = [run for run in pspo_config.model_runs(cfg, model) if (run == RELEASED_CLIP_RUN) == released
            and cfg["runs"][run]["objective"] == objective
            and (objective != "noclip" or cfg["runs"][run]["grpo"].get("num_iterations", 1) == 1)]
    run_ids = [pspo_config.run_id(run, cfg["main_alpha"] if objective == "pspo" else None) for run in runs]
    return summary[(summary.model == model) & summary.run_id.isin(run_ids[:1]) & (summary.benchmark == benchmark)]


def table_reported(cfg: dict, summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for hub_id, benchmark, objective, reported in REPORTED:
        models = [m for m, spec in cfg["models"].items() if spec["path"] == hub_id]
        variants = [("GR-PSPO" if objective == "pspo" else "GRPO-clip", False)]
        if objective == "clip" and any(RELEASED_CLIP_RUN in pspo_config.model_runs(cfg, m) for m in models):
            variants.append(("GRPO-clip as released (eps=0, lr 5e-7)", True))
        for method, released in variants:
            reproduced, std, n_seeds, trained = None, None, 0, None
            for model in models:
                hit = _reported_hit(cfg, summary, model, benchmark, objective, released)
                if not hit.empty:
                    reproduced, std, n_seeds = hit["mean"].iloc[0], hit["std"].iloc[0], int(hit.seeds.iloc[0])
                    trained = bool(hit.trained.iloc[0])
            rows.append({
                "model": hub_id, "benchmark": BENCHMARK_LABELS[benchmark], "method": method, "reported": reported,
                "reproduced": reproduced, "std": std, "seeds": n_seeds,
                "difference": None if reproduced is None else reproduced - reported, "trained": trained,
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


# --- writing ---------------------------------------------------------------------------------------------------

def _provenance_line(prov: dict) -> str:
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


def write_table(df: pd.DataFrame, stem: Path, title: str, prov: dict) -> None:
    """Write ``stem``.csv/.md/.tex atomically; numeric-only helper columns stay in the CSV only."""
    line = _provenance_line(prov)
    shown = _shown(df)
    csv = f"# {title}; provenance: {json.dumps(prov, sort_keys=True, default=str)}\n" + df.to_csv(index=False)
    md = f"### {title}\n\n" + (shown.to_markdown(index=False, floatfmt=".4g") if not shown.empty else "(no rows)")
    md += f"\n\n<sub>{line}</sub>\n"
    tex = shown.to_latex(index=False, float_format=lambda x: f"{x:.4g}", na_rep="--", caption=title, escape=True)
    tex = f"% {line}\n" + tex
    for ext, text in (("csv", csv), ("md", md), ("tex", tex)):
        write_text_atomic(stem.with_suffix(f".{ext}"), text)


def build_report(cfg: dict, index_path: str | Path) -> None:
    out = Path(cfg["results_dir"]) / "report"
    status = collect_train_status(cfg)
    df = collect_metrics(cfg, status)
    df["changed_vs_base"] = changed_vs_base(cfg, df)
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
    logs = collect_train_logs(cfg)
    pairs = control.control_pairs(cfg)
    if pairs:
        drift = control.table_control(cfg, pairs, logs)
        tables[control.CONTROL_TABLE] = (
            "GR-PSPO vs its control GRPO-noclip (mu=2), same seed and data: weight distances relative to ||θ₀|| "
            "(drift ratio = distance between the two over their mean distance from the base) and training reward "
            "agreement", drift)
        control.figure_control(cfg, pairs, logs, drift, out / "figures" / control.CONTROL_FIGURE)
    for name, (title, table) in tables.items():
        write_table(table, out / "tables" / name, title, prov)
    figure_training_curves(logs, out / "figures" / "training_curves")
    figure_accuracy(cfg, summary, out / "figures" / "accuracy")
    warnings = [f"{model}/{run_id}/seed{seed}: {w}"
                for (model, run_id, seed), run in status.items() for w in run["warnings"]]
    write_index(cfg, Path(index_path), tables, prov, warnings)


def write_index(cfg: dict, path: Path, tables: dict, prov: dict, warnings: list[str] = ()) -> None:
    """index.md: the training runs' warnings first (a run without learning signal is no result), then the files."""
    lines = [f"# Results: {cfg.get('description') or cfg['results_dir']}", ""]
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    lines += [f"Provenance: {_provenance_line(prov)}", "", "## Tables", ""]
    for name, (title, _) in tables.items():
        lines.append(f"- {title}: [md](report/tables/{name}.md) · [csv](report/tables/{name}.csv) · "
                     f"[tex](report/tables/{name}.tex)")
    lines += ["", "## Figures", ""]
    for name in figure_names(cfg):
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


# Columns of pspo.train's CSV log. The ratio statistics are the reused (mu >= 2) passes', where the objectives differ;
# the clip fraction exists only for clip runs (NaN, so not drawn, elsewhere); clipped_ratio = truncated completions.
TRAINING_CURVE_METRICS = ("reward", "objective/reused/ratio_std", "completions/mean_length",
                          "completions/clipped_ratio", "objective/reused/clip_fraction")


def figure_training_curves(logs: pd.DataFrame, stem: Path) -> None:
    """Mean ± std over seeds of the logged training metrics, one row per model, one colour per method in every
    panel. The x axis is the epoch (training prompts seen), so a run at mu = 2 (two optimiser steps per generation
    batch) lines up with one at mu = 1 on the same data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in TRAINING_CURVE_METRICS if not logs.empty and m in logs.columns]
    models = list(logs.model.unique()) if not logs.empty else []
    x = "epoch" if "epoch" in logs.columns else "step"
    colours = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(logs["label"]))} if models else {}
    fig, axes = plt.subplots(max(len(models), 1), max(len(metrics), 1), figsize=(4 * max(len(metrics), 1),
                             3 * max(len(models), 1)), squeeze=False)
    for i, model in enumerate(models):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            sub = logs[logs.model == model]
            for label, g in sub.groupby("label", sort=False):
                stats = g.dropna(subset=[metric]).groupby(x)[metric].agg(["mean", "std"]).reset_index()
                if stats.empty:
                    continue
                ax.plot(stats[x], stats["mean"], marker=".", color=colours[label], label=label)
                ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=colours[label], alpha=0.2)
            ax.set_title(f"{model}: {metric}", fontsize=9)
            ax.set_xlabel("epoch (training prompts seen)" if x == "epoch" else "step")
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
            label = sub["label"].iloc[0] + ("" if sub["trained"].all() else " (not trained)")
            ax.bar(x + (k - (len(run_ids) - 1) / 2) * width, mean, width, yerr=[mean - low, high - mean],
                   capsize=2, label=label)
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
