"""GPUs for the jobs of one local Snakemake run: each job gets its own, none shares one.

``snakemake --cores all`` on a machine with G GPUs: :func:`bound_local_run` (the workflow's ``onstart``) caps the
``gpu`` resource at G, so at most G GPU-jobs' worth run at once, and hands the jobs the machine's GPU list
(``$PSPO_GPU_POOL``). Each job then takes as many free GPUs as its ``gpu`` resource asks (:func:`job_gpus`, called
by ``pspo.workflow.run_job``) and sees only those (``CUDA_VISIBLE_DEVICES``). A GPU is held by an exclusive
``flock`` on its lock file, which the kernel drops when the job exits in any way, ``kill -9`` included, so a killed
job's GPU is free for the next one. Under a cluster executor (``--profile slurm``) nothing here runs: the
allocation, and ``CUDA_VISIBLE_DEVICES``, are SLURM's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from pspo.errors import PSPOError

POOL_ENV = "PSPO_GPU_POOL"  # the GPUs a local run's jobs share, comma-separated (set by bound_local_run)
LOCK_DIR_ENV = "PSPO_GPU_LOCK_DIR"  # where the per-GPU lock files live (default: one directory per user in /tmp)
POLL_SECONDS = 0.5


def machine_gpus() -> list[str]:
    """This machine's GPUs as ``CUDA_VISIBLE_DEVICES`` tokens: the ones it already names (a user's or a batch
    system's restriction is kept), else one index per GPU nvidia-smi lists; empty without GPUs."""
    from pspo.device import visible_nvidia_gpus

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [token.strip() for token in visible.split(",") if token.strip() and token.strip() != "-1"]
    seen = visible_nvidia_gpus()
    return [str(i) for i in range(len(seen[0]))] if seen else []


def bound_local_run(workflow: Any, most: int = 0) -> list[str]:
    """The workflow's ``onstart``: under the local executor, with GPUs present, cap the ``gpu`` resource at their
    number (unless ``--resources gpu=N`` set it) and publish the pool to the jobs. Returns the pool (empty: no-op).
    ``most``: the most GPUs one job of the grid asks for; more than the machine has is refused before any job."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or plugin.name != "local":
        return []
    pool = machine_gpus()
    if not pool:
        return []
    if most > len(pool):
        raise PSPOError(f"a job of this grid asks for {most} GPUs and this machine has {len(pool)} "
                        f"({','.join(pool)}): lower the model's gpus in the config or run it under SLURM "
                        "(--profile slurm)")
    if "gpu" not in workflow.global_resources:
        workflow.register_resource("gpu", len(pool))
        # Snakemake 9.27's register_resource sets what is free now, not the cap its scheduler counts jobs against
        # (so later rounds would start more); the cap is the scheduler's global_resources.
        caps = getattr(getattr(workflow, "scheduler", None), "global_resources", None)
        if isinstance(caps, dict):
            caps["gpu"] = len(pool)
    os.environ[POOL_ENV] = ",".join(pool)
    return pool


def lock_dir() -> Path:
    path = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"pspo-gpu-slots-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire(n: int, pool: list[str], *, directory: Path | None = None, timeout: float | None = None
            ) -> tuple[list[str], list[int]]:
    """Take ``n`` GPUs of ``pool`` that no other job holds, waiting until that many are free at once (a partial
    set is given back while waiting, so two jobs cannot deadlock). Returns (GPU tokens, lock descriptors)."""
    if n > len(pool):
        raise PSPOError(f"this job asks for {n} GPUs and the machine has {len(pool)} ({','.join(pool) or 'none'}): "
                        f"lower the model's gpus in the config or run it under SLURM (--profile slurm)")
    directory = directory or lock_dir()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        taken: list[tuple[str, int]] = []
        for token in pool:
            fd = _try_lock(directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', token)}.lock")
            if fd is not None:
                taken.append((token, fd))
                if len(taken) == n:
                    return [t for t, _ in taken], [fd for _, fd in taken]
        for _, fd in taken:
            os.close(fd)
        if deadline is not None and time.monotonic() > deadline:
            raise PSPOError(f"no {n} free GPUs of {','.join(pool)} within {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def job_gpus(n: int) -> Iterator[list[str] | None]:
    """For a job whose ``gpu`` resource is ``n``: under a local run that published a pool, hold ``n`` of its GPUs
    and set ``CUDA_VISIBLE_DEVICES`` to them for the block (yields them); otherwise change nothing (yields None)."""
    pool = [t for t in os.environ.get(POOL_ENV, "").split(",") if t]
    if n < 1 or not pool:
        yield None
        return
    tokens, fds = acquire(n, pool)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(tokens)
    try:
        yield tokens
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        for fd in fds:
            os.close(fd)


__all__ = ["POOL_ENV", "LOCK_DIR_ENV", "machine_gpus", "bound_local_run", "lock_dir", "acquire", "job_gpus"]
