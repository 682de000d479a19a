"""Workflow scripts that start processes with ``spawn`` (vLLM's engine core does; on CUDA it always spawns) run
under Snakemake: the child must not re-run the Snakemake script (it has no ``snakemake`` object there).

A real Snakemake run of a one-rule workflow whose script goes through ``pspo.workflow.run_job`` and starts a
``spawn`` child, as vLLM's ``LLM(...)`` does; and the same script without the guard, which fails as vLLM
evaluation jobs did (``NameError: name 'snakemake' is not defined``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

SNAKEFILE = """
rule all:
    input: "child.txt"

rule spawn_child:
    output: "child.txt"
    log: "job.log"
    script: "job.py"
"""

SCRIPT = """
import multiprocessing

from spawn_probe import write_pid
{guard}

def body():
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=write_pid, args=(snakemake.output[0],))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"spawned child failed with exit code {{child.exitcode}}")

{call}
"""


def _run(tmp_path: Path, guarded: bool) -> subprocess.CompletedProcess:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    guard = "from pspo.workflow import run_job" if guarded else ""
    call = "run_job(snakemake, body)" if guarded else "body()"
    (tmp_path / "job.py").write_text(textwrap.dedent(SCRIPT.format(guard=guard, call=call)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(Path(__file__).parent)])}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--nolock"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)


def test_run_job_lets_a_spawned_child_start_under_snakemake(tmp_path):
    proc = _run(tmp_path, guarded=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "child.txt").read_text().strip().isdigit()


def test_without_run_job_the_spawned_child_reruns_the_script(tmp_path):
    """The failure the guard prevents, shown so that a Snakemake or Python change that makes it moot is noticed."""
    proc = _run(tmp_path, guarded=False)
    assert proc.returncode != 0
    log = tmp_path / "job.log"
    assert "name 'snakemake' is not defined" in proc.stderr + (log.read_text() if log.exists() else "")
