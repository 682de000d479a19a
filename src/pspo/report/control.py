"""The report's GR-PSPO-against-control table and figure: weight drift (pspo.weights) and reward agreement."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pspo.config import run_label
from pspo.grid import TrainJob
from pspo.io import read_json
from pspo.report.collect import paired
from pspo.report.figures import save_figure


def reward_agreement(pspo_log, control_log) -> dict:
    """The two runs' training reward per generation step, compared on the steps both logged."""
    a = pspo_log.dropna(subset=["reward"]).set_index("step")["reward"]
    b = control_log.dropna(subset=["reward"]).set_index("step")["reward"]
    common = a.index.intersection(b.index)
    if common.empty:
        return {"steps_compared": 0, "mean_abs_reward_diff": None, "first_differing_step": None}
    diff = (a[common] - b[common]).abs()
    differing = diff[diff > 1e-9]
    return {"steps_compared": int(len(common)), "mean_abs_reward_diff": float(diff.mean()),
            "first_differing_step": int(differing.index[0]) if len(differing) else None,
            "pspo_final_reward": float(a[common].iloc[-1]), "control_final_reward": float(b[common].iloc[-1])}


def _run_log(logs, job: TrainJob):
    """The rows of one training run in :func:`pspo.report.collect_train_logs`'s frame."""
    return logs[(logs.model == job.model) & (logs.run_id == job.run_id) & (logs.seed == job.seed)]


def table_control(cfg: dict, pairs: Sequence, logs, distance_files: Sequence[str]) -> pd.DataFrame:
    """One row per (model, alpha, seed) of :func:`control_pairs`: weight drift (from ``distance_files``, one per
    pair, in order) and reward agreement."""
    rows = []
    for (job, control), path in paired(list(pairs), distance_files, "weight distance"):
        d = read_json(path)
        rows.append({"model": job.model, "alpha": job.alpha, "seed": job.seed, "control": control.run_id,
                     "dist_pspo_control": d["pspo_control"], "dist_pspo_base": d["pspo_base"],
                     "dist_control_base": d["control_base"], "drift_ratio": d["drift_ratio"],
                     **reward_agreement(_run_log(logs, job), _run_log(logs, control))})
    return pd.DataFrame(rows)


def figure_control(cfg: dict, pairs: Sequence, logs, table, paths: Sequence[str]) -> None:
    """Left: reward per step of GR-PSPO (main alpha) and its control, per seed. Right: the three distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for k, (job, control) in enumerate(p for p in pairs if p[0].alpha == cfg["main_alpha"]):
        for j, style in ((job, "-"), (control, "--")):
            g = _run_log(logs, j).dropna(subset=["reward"])
            left.plot(g["step"], g["reward"], style, color=f"C{k}",
                      label=f"{run_label(cfg, j.run, j.alpha)}, seed {j.seed}")
    left.set_xlabel("step")
    left.set_ylabel("training reward")
    left.set_title("same seed, same data: solid GR-PSPO, dashed its control")
    left.grid(alpha=0.3)
    left.legend(fontsize=6)
    if not table.empty:
        x = np.arange(len(table))
        for i, (col, label) in enumerate((("dist_pspo_control", "GR-PSPO ↔ control"),
                                          ("dist_pspo_base", "GR-PSPO ↔ base"),
                                          ("dist_control_base", "control ↔ base"))):
            right.bar(x + (i - 1) * 0.27, table[col], 0.27, label=label)
        right.set_xticks(x, [f"{m}\nα={a:g} s{s}" for m, a, s in zip(table.model, table.alpha, table.seed)],
                         fontsize=6)
        right.legend(fontsize=7)
    right.set_ylabel("||Δθ|| / ||θ₀||")
    right.set_title("weight distances of the final models")
    right.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, paths)
    plt.close(fig)
