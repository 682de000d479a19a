"""The report's figures: Figure 1 (the surrogates, from the trainer's own objectives), the training curves and the
accuracy bars. Each is saved atomically in every format the layout names (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pspo import layout
from pspo.benchmarks import LABELS
from pspo.io import atomic_path
from pspo.report.tables import main_run_ids


def save_figure(fig, paths) -> None:
    """Save ``fig`` atomically to each of ``paths``, in the format its suffix names."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight")


def figure_paths(results_dir: str, name: str) -> list[str]:
    """Figure ``name`` in each of the layout's FIGURE_EXTS."""
    return [layout.path(results_dir, layout.FIGURE, name=name, ext=ext) for ext in layout.FIGURE_EXTS]


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
    save_figure(fig, (png, pdf))
    plt.close(fig)


# Columns of pspo.train's CSV log. The ratio statistics are the reused (mu >= 2) passes', where the objectives differ;
# the clip fraction exists only for clip runs (NaN, so not drawn, elsewhere); clipped_ratio = truncated completions.
TRAINING_CURVE_METRICS = ("reward", "objective/reused/ratio_std", "completions/mean_length",
                          "completions/clipped_ratio", "objective/reused/clip_fraction")


def figure_training_curves(logs: pd.DataFrame, paths) -> None:
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
    save_figure(fig, paths)
    plt.close(fig)


def figure_accuracy(cfg: dict, summary: pd.DataFrame, paths) -> None:
    """Accuracy per benchmark with the pooled Wilson 95% interval, one panel per model (main-alpha runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(cfg["models"])
    benchmarks = cfg["evaluation"]["benchmarks"]
    fig, axes = plt.subplots(1, len(models), figsize=(max(6, 2.2 * len(benchmarks)) * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        run_ids = ["base"] + main_run_ids(cfg, model)
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
        ax.set_xticks(x, [LABELS[b] for b in benchmarks])
        ax.set_ylabel("accuracy % (T=0)")
        ax.set_title(model)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, paths)
    plt.close(fig)
