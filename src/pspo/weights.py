"""Distances between model weights, in float64: GR-PSPO's final model against its control's and the base's.

The theory predicts GR-PSPO and GRPO-noclip at mu = 2 nearly coincide: with the same seed, data and learning rate,
GR-PSPO's gradient is (1 - alpha) times the control's on every token, and Adam nearly cancels a constant scale
(exactly, but for its epsilon, until the two runs' samples diverge). The weight drift measures it:
||theta_pspo - theta_control|| beside ||theta_pspo - theta_0|| and ||theta_control - theta_0||, each relative to
||theta_0||; drift ratio = the first over the mean of the other two (0: identical runs, ~1.4: as far apart as two
independent directions of the same length).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from pspo.errors import PSPOError
from pspo.io import write_json_atomic
from pspo.provenance import provenance


def load_weights(model_dir: str | os.PathLike) -> dict:
    from safetensors.torch import load_file

    out: dict = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    if not out:
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


def write_distances(*, pspo_dir: str, control_dir: str, base_dir: str, out: str, pair: Sequence[str]) -> None:
    """The workflow's `weight_distance` job: one JSON per GR-PSPO run, written atomically with provenance."""
    d = weight_distances(pspo_dir, control_dir, base_dir)
    write_json_atomic(out, {"pspo": pair[0], "control": pair[1], **d, "provenance": provenance()})
