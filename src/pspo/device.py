"""The checks a training or evaluation job starts with: a GPU when the job needs one, and torch's CPU threads.

One helper for both (``run_training`` and ``evaluate``, hence both workflow scripts), so the two stages refuse a
GPU-sized job in the same words and set threads the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

from pspo.errors import PSPOError

GPU_MESSAGE = ("this is a GPU-sized job (model {model}); no GPU here: use config/cpu.yaml for a CPU run, "
               "or run on a cluster with `snakemake --profile slurm`")
THREADS_ENV = "PSPO_TORCH_THREADS"  # torch's CPU threads when the caller gives none (benchmarks, ad-hoc runs)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ones that decide fp32 vs bf16 speed


def cpu_features() -> set[str]:
    """Which of CPU_FLAGS this CPU has (read from /proc/cpuinfo, never assumed; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return set()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return set(flags) & set(CPU_FLAGS)


def cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls faster than fp32. Without them (AVX2) bf16 runs far slower than fp32."""
    return bool(cpu_features() & {"avx512_bf16", "amx_bf16"})


DRIVER_MESSAGE = ("nvidia-smi sees {gpus} (driver {driver}) but torch {torch} (built for CUDA {cuda}) cannot use it: "
                  "the driver is probably too old for this CUDA build; update the driver or install a torch built "
                  "for the CUDA version the driver supports (nvidia-smi's header names it)")


def visible_nvidia_gpus() -> tuple[list[str], str] | None:
    """(GPU names, driver version) as nvidia-smi reports them, or None without nvidia-smi or GPUs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not rows:
        return None
    return [r[0] for r in rows], rows[0][-1]


def ensure_gpu(model: str) -> None:
    """Fail at once, with the way out, when a GPU-sized job lands on a machine without a usable GPU; a GPU that
    nvidia-smi sees but torch cannot use is named with the driver and torch's CUDA version."""
    import torch

    if torch.cuda.is_available():
        return
    seen = visible_nvidia_gpus()
    if seen is not None:
        names, driver = seen
        gpus = f"{len(names)} GPU{'s' if len(names) > 1 else ''} ({names[0]})"
        raise PSPOError(DRIVER_MESSAGE.format(gpus=gpus, driver=driver, torch=torch.__version__,
                                              cuda=torch.version.cuda))
    raise PSPOError(GPU_MESSAGE.format(model=model))


def _threads_from_env() -> int | None:
    value = os.environ.get(THREADS_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise PSPOError(
            f"{THREADS_ENV}={value!r} is not an integer; set it to a number of threads or unset it"
        ) from None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op CPU threads for a block (None: unchanged), restoring the old value afterwards; yields the
    number in use."""
    import torch

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(old)


@contextlib.contextmanager
def job_device(*, model: str, require_gpu: bool = False, threads: int | None = None) -> Iterator[int]:
    """The GPU check, then ``threads`` (else $PSPO_TORCH_THREADS, else torch's default) CPU threads for the block."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise PSPOError(f"threads must be a positive integer, got {threads!r}")
    if require_gpu:
        ensure_gpu(model)
    with torch_threads(threads if threads is not None else _threads_from_env()) as used:
        yield used


__all__ = ["GPU_MESSAGE", "DRIVER_MESSAGE", "visible_nvidia_gpus", "THREADS_ENV", "ensure_gpu", "torch_threads", "job_device"]
