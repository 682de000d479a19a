"""GPU memory a training job needs, from its checkpoint's parameter count (read from safetensors headers, so no
weight is loaded), and the one-line refusal of a GPU too small for it.

A training job holds, on one GPU:

    training  = 16 B/parameter: fp32 weights (4) + fp32 gradients (4) + AdamW's two fp32 moments (8)
                (TRL loads the policy in float32 unless model_init_kwargs says otherwise; bf16 is autocast)
    vLLM      = vllm_gpu_memory_utilization x the GPU's memory (colocated: vLLM's weights and KV cache; TRL's
                default share 0.3)
    activations, logits and the allocator's slack on top (batch- and length-dependent; not counted here)

so the GPU must have at least ``training / (1 - vLLM share)``: a lower bound, not a guarantee.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from pspo.errors import PSPOError

TRAINING_BYTES_PER_PARAMETER = 16
GIB = 1024**3


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in ``model_dir``'s ``*.safetensors`` files (a tied head is stored, and counted, once)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise PSPOError(f"no *.safetensors weights in {model_dir}: prepare the model with the workflow's "
                        "prepare_model rule (or save_pretrained) first")
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def vllm_share(grpo: dict[str, Any]) -> float:
    """The share of the GPU a colocated vLLM takes (0 without one): the settings', else TRL's default."""
    if not grpo.get("use_vllm") or grpo.get("vllm_mode", "colocate") != "colocate":
        return 0.0
    if "vllm_gpu_memory_utilization" in grpo:
        return float(grpo["vllm_gpu_memory_utilization"])
    import dataclasses

    from trl import GRPOConfig

    return next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "vllm_gpu_memory_utilization")


def training_gib(parameters: int) -> float:
    return parameters * TRAINING_BYTES_PER_PARAMETER / GIB


def minimum_gpu_gib(parameters: int, share: float) -> float:
    """The least GPU memory on which the policy's training state fits beside vLLM's share (activations not counted)."""
    return training_gib(parameters) / (1.0 - share)


def check_training_fits(model_dir: str | Path, grpo: dict[str, Any], *, model: str, gpu_name: str,
                        gpu_gib: float) -> None:
    """One line, before anything is loaded, when the training state plus vLLM's share exceeds the GPU."""
    parameters = parameter_count(model_dir)
    share = vllm_share(grpo)
    need = minimum_gpu_gib(parameters, share)
    if need > gpu_gib:
        raise PSPOError(
            f"model {model} ({parameters / 1e9:.2f}B parameters) needs {training_gib(parameters):.1f} GiB for its "
            f"fp32 weights, gradients and AdamW moments beside vLLM's {share:.0%} share, so a GPU of at least "
            f"{need:.1f} GiB; this {gpu_name} has {gpu_gib:.1f} GiB: ask SLURM for a larger one (--set-resources "
            "train:gpu_model=... or train:constraint=...) or lower training.grpo.vllm_gpu_memory_utilization")


__all__ = ["GIB", "TRAINING_BYTES_PER_PARAMETER", "parameter_count", "vllm_share", "training_gib", "minimum_gpu_gib",
           "check_training_fits"]
