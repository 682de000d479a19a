"""GR-PSPO against its control, GRPO-noclip at mu = 2: how far apart do the two runs end up?

The theory predicts they nearly coincide: with the same seed, data and learning rate, GR-PSPO's gradient is
(1 - alpha) times the control's on every token, and Adam nearly cancels a constant scale (exactly, but for its
epsilon, until the two runs' samples diverge). So the pipeline measures, per (model, alpha, seed):

- the weight drift: ||theta_pspo - theta_control|| beside ||theta_pspo - theta_0|| and ||theta_control - theta_0||,
  each relative to ||theta_0||; drift ratio = the first over the mean of the other two (0: identical runs, ~1.4:
  as far apart as two independent directions of the same length);
- the reward trajectories side by side: mean |reward difference| over the generation steps both logged, and the
  first step at which they differ (the runs sample the same completions until the weights diverge).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from pspo import config as pspo_config
from pspo.layout import CONTROL_FIGURE, CONTROL_TABLE  # noqa: F401 - the report's names for this comparison


def control_run(cfg: dict, model: str) -> str | None:
    """The run that is GR-PSPO's control for ``model``: objective noclip with mu = 2 (None if the grid has none)."""
    for run in pspo_config.model_runs(cfg, model):
        if cfg["runs"][run]["objective"] != "noclip":
            continue
        settings = pspo_config.grpo_settings(cfg, pspo_config.TrainJob(model, run, None, cfg["seeds"][0]))
        if settings.get("num_iterations", 1) == 2:
            return run
    return None


def control_pairs(cfg: dict) -> list[tuple[pspo_config.TrainJob, pspo_config.TrainJob]]:
    """(GR-PSPO job, its control job) for every model, alpha and seed the grid trains both for."""
    pairs = []
    for model in cfg["models"]:
        control = control_run(cfg, model)
        if control is None:
            continue
        for job in pspo_config.train_jobs(cfg):
            if job.model == model and cfg["runs"][job.run]["objective"] == "pspo":
                pairs.append((job, pspo_config.TrainJob(model, control, None, job.seed)))
    return pairs


def load_weights(model_dir: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
        from pspo.errors import PSPOError

        raise PSPOError(f"{model_dir}: no .safetensors weights to compare")
    return out


def distances(ref: dict, pairs: dict[str, tuple[dict, dict]]) -> tuple[dict[str, tuple[float, float]], float, int]:
    """For each named pair (x, y) of weight dicts: (||x - y||, max |x - y|), over the tensors of ``ref`` that both
    hold with ref's shape, in one float64 pass; also ||ref|| over those tensors and how many were compared."""
    import torch

    sq = dict.fromkeys(pairs, 0.0)
    peak = dict.fromkeys(pairs, 0.0)
    ref_sq, compared = 0.0, 0
    for name, t0 in ref.items():
        if any(name not in x or name not in y or x[name].shape != t0.shape or y[name].shape != t0.shape
               for x, y in pairs.values()):
            continue
        for key, (x, y) in pairs.items():
            d = x[name].detach().cpu().to(torch.float64) - y[name].detach().cpu().to(torch.float64)
            sq[key] += float(d.square().sum())
            peak[key] = max(peak[key], float(d.abs().max()))
        ref_sq += float(t0.to(torch.float64).square().sum())
        compared += 1
    return {k: (math.sqrt(sq[k]), peak[k]) for k in pairs}, math.sqrt(ref_sq), compared


def weight_distances(pspo_dir: str | os.PathLike, control_dir: str | os.PathLike,
                     base_dir: str | os.PathLike) -> dict:
    """Distances between the three models over the base checkpoint's tensors, relative to ||theta_0|| (float64)."""
    base, a, b = load_weights(base_dir), load_weights(pspo_dir), load_weights(control_dir)
    dist, base_norm, _ = distances(base, {"pspo_control": (a, b), "pspo_base": (a, base), "control_base": (b, base)})
    d = {k: l2 / (base_norm or 1.0) for k, (l2, _) in dist.items()}
    moved = (d["pspo_base"] + d["control_base"]) / 2
    d["drift_ratio"] = d["pspo_control"] / moved if moved else None
    return d


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


def write_distances(*, pspo_dir: str, control_dir: str, base_dir: str, out: str, pair: Sequence[str]) -> None:
    """The workflow's `weight_distance` job: one JSON per GR-PSPO run, written atomically with provenance."""
    from pspo.io import write_json_atomic
    from pspo.provenance import provenance

    d = weight_distances(pspo_dir, control_dir, base_dir)
    write_json_atomic(out, {"pspo": pair[0], "control": pair[1], **d, "provenance": provenance()})


def _run_log(logs, job: pspo_config.TrainJob):
    """The rows of one training run in :func:`pspo.report.collect_train_logs`'s frame."""
    return logs[(logs.model == job.model) & (logs.run_id == job.run_id) & (logs.seed == job.seed)]


def table_control(cfg: dict, pairs: Sequence, logs, distance_files: Sequence[str]) -> "pd.DataFrame":  # noqa: F821
    """One row per (model, alpha, seed) of :func:`control_pairs`: weight drift (from ``distance_files``, one per
    pair, in order) and reward agreement. (pandas is imported lazily: the Snakefile imports this module.)"""
    import pandas as pd

    from pspo.io import read_json
    from pspo.report.collect import paired

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
    import numpy as np

    from pspo.report.figures import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for k, (job, control) in enumerate(p for p in pairs if p[0].alpha == cfg["main_alpha"]):
        for j, style in ((job, "-"), (control, "--")):
            g = _run_log(logs, j).dropna(subset=["reward"])
            left.plot(g["step"], g["reward"], style, color=f"C{k}",
                      label=f"{pspo_config.run_label(cfg, j.run, j.alpha)}, seed {j.seed}")
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


__all__ = ["load_weights", "distances", "control_run", "control_pairs", "weight_distances", "reward_agreement",
           "write_distances", "table_control", "figure_control", "CONTROL_TABLE", "CONTROL_FIGURE"]
