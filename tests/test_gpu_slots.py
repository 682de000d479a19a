"""GPUs on one machine: a local Snakemake run gives each GPU job its own GPUs (simulated device ids on CPU)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pspo import gpu_slots
from pspo.errors import PSPOError

REPO = Path(__file__).resolve().parents[1]

SNAKEFILE = """
import sys
sys.path.insert(0, {src!r})
from pspo.gpu_slots import bound_local_run

onstart:
    bound_local_run(workflow)

rule all:
    input: expand("one_{{i}}.json", i=range(6)), "two.json"

rule one:
    output: "one_{{i}}.json"
    resources: gpu=1
    script: "job.py"

rule two:
    output: "two.json"
    resources: gpu=2
    script: "job.py"
"""

JOB = """
import json, os, time
launched = time.time()
from pspo.workflow import run_job

def body():
    start = time.time()
    time.sleep(1.5)
    with open(snakemake.output[0], "w") as f:
        json.dump({"gpus": os.environ["CUDA_VISIBLE_DEVICES"].split(","), "launched": launched, "start": start,
                   "end": time.time()}, f)

run_job(snakemake, body)
"""


def test_six_jobs_over_four_gpus_never_share_one(tmp_path):
    """Through Snakemake's local executor with the workflow's onstart: 6 one-GPU jobs and a two-GPU job on a
    4-"GPU" machine (CUDA_VISIBLE_DEVICES=0,1,2,3, no --resources): every job holds distinct GPUs, no GPU is held by
    two jobs at once, and at most 4 GPUs' worth run together although --cores allows 7."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE.format(src=str(REPO / "src")))
    (tmp_path / "job.py").write_text(JOB)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3", gpu_slots.LOCK_DIR_ENV: str(tmp_path / "locks"),
           "PYTHONPATH": str(REPO / "src")}
    env.pop(gpu_slots.POOL_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "7"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(jobs) == 7
    assert sorted(len(j["gpus"]) for j in jobs) == [1] * 6 + [2]
    assert all(set(j["gpus"]) <= {"0", "1", "2", "3"} and len(set(j["gpus"])) == len(j["gpus"]) for j in jobs)
    for a, b in itertools.combinations(jobs, 2):
        overlap = a["start"] < b["end"] and b["start"] < a["end"]
        assert not (overlap and set(a["gpus"]) & set(b["gpus"])), (a, b)
    for t in sorted(j["launched"] for j in jobs):  # Snakemake itself starts no more (the onstart's gpu bound)
        assert sum(len(j["gpus"]) for j in jobs if j["launched"] <= t < j["end"]) <= 4
    assert max(j["end"] for j in jobs) - min(j["start"] for j in jobs) > 2 * 1.5  # 8 GPUs' worth: two waves at least


def test_a_killed_jobs_gpu_is_reused(tmp_path):
    """A job killed with SIGKILL holds its GPU no longer: the kernel drops its lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO / 'src')!r})
            from pathlib import Path
            from pspo.gpu_slots import acquire
            print(acquire(1, ["7"], directory=Path({str(tmp_path)!r}))[0], flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "['7']"
        with pytest.raises(PSPOError, match=r"^no 1 free GPUs of 7 within 1 s$"):
            gpu_slots.acquire(1, ["7"], directory=tmp_path, timeout=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t0 = time.monotonic()
    tokens, fds = gpu_slots.acquire(1, ["7"], directory=tmp_path, timeout=10)
    assert tokens == ["7"] and time.monotonic() - t0 < 2
    for fd in fds:
        os.close(fd)


def test_a_job_needing_two_gets_two_and_waits_for_both(tmp_path):
    tokens, fds = gpu_slots.acquire(1, ["0", "1", "2"], directory=tmp_path)
    assert tokens == ["0"]
    two, fds2 = gpu_slots.acquire(2, ["0", "1", "2"], directory=tmp_path)
    assert two == ["1", "2"]
    with pytest.raises(PSPOError, match="no 1 free GPUs"):
        gpu_slots.acquire(1, ["0", "1", "2"], directory=tmp_path, timeout=0.5)
    for fd in fds + fds2:
        os.close(fd)


def test_a_job_asking_more_gpus_than_the_machine_has_is_one_line(tmp_path):
    with pytest.raises(PSPOError, match=r"^this job asks for 5 GPUs and the machine has 4 \(0,1,2,3\): lower"):
        gpu_slots.acquire(5, ["0", "1", "2", "3"], directory=tmp_path)


def test_job_gpus_sets_and_restores_the_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv(gpu_slots.POOL_ENV, raising=False)
    with gpu_slots.job_gpus(1) as gpus:  # no pool published (SLURM, or no GPUs): nothing changes
        assert gpus is None and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.setenv(gpu_slots.POOL_ENV, "0,1")
    with gpu_slots.job_gpus(0) as gpus:
        assert gpus is None
    with gpu_slots.job_gpus(1) as gpus:
        assert gpus == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_the_bound_applies_to_the_local_executor_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.delenv(gpu_slots.POOL_ENV, raising=False)
    registered = {}

    def workflow(name, resources):
        return SimpleNamespace(executor_plugin=SimpleNamespace(name=name), global_resources=resources,
                               register_resource=registered.__setitem__)

    assert gpu_slots.bound_local_run(workflow("slurm", {})) == [] and gpu_slots.POOL_ENV not in os.environ
    assert gpu_slots.bound_local_run(workflow("local", {"gpu": 1})) == ["3", "5"] and registered == {}
    assert gpu_slots.bound_local_run(workflow("local", {})) == ["3", "5"] and registered == {"gpu": 2}
    assert os.environ[gpu_slots.POOL_ENV] == "3,5"
    with pytest.raises(PSPOError, match=r"asks for 4 GPUs and this machine has 2 \(3,5\)"):
        gpu_slots.bound_local_run(workflow("local", {}), most=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots.machine_gpus() == []


def test_under_slurm_a_gpu_job_is_one_task_that_sees_all_its_gpus():
    """The SLURM plugin 2.6.1 adds --ntasks-per-gpu=1 to a GPU job unless its tasks_per_gpu is 0: a 2-GPU training
    job would become two tasks, and its one `srun -n1` step would see one GPU. Every GPU rule sets 0."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    # The workflow is parsed in its own process: an included Snakefile leaves a storage registry in this one whose
    # attribute lookups answer anything, and vLLM's kernel dispatcher, scanning every module, fails on it later.
    parse = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from snakemake.api import SnakemakeApi
        from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings, ResourceSettings,
                                              StorageSettings, WorkflowSettings)
        repo = Path(sys.argv[1])
        with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
            api_workflow = api.workflow(
                resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                config_settings=ConfigSettings(configfiles=[repo / "config" / "config.yaml"]),
                workflow_settings=WorkflowSettings(), deployment_settings=DeploymentSettings(),
                snakefile=repo / "Snakefile", workdir=repo)
            workflow = api_workflow._get_workflow()
            workflow.include(api_workflow.snakefile, overwrite_default_target=True)
            print(json.dumps({r.name: r.resources["tasks_per_gpu"].value for r in workflow.rules
                              if "gpu" in r.resources}))
    """)
    proc = subprocess.run([sys.executable, "-c", parse, str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks_per_gpu = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tasks_per_gpu == {"preflight": 0, "train": 0, "evaluate": 0}

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def submit(**resources) -> str:
        job = SimpleNamespace(resources=Resources({"gpu": 2, "mem_mb": 1000, "runtime": 60, **resources}), threads=4,
                              is_group=lambda: False, name="train", wildcards={})
        return get_submit_command(job, dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="",
                                            partition="", workdir=".")) + set_gres_string(job)

    assert "--ntasks-per-gpu=1" in submit()  # what the plugin does unless told
    assert "--ntasks-per-gpu" not in submit(tasks_per_gpu=0) and "--gpus=2" in submit(tasks_per_gpu=0)
    # a run over 2 nodes asks for its GPUs per node (--gres; SLURM's --gpus counts the whole job's)
    two_nodes = submit(gpu=0, gres="gpu:4", nodes=2, tasks_per_gpu=0)
    assert "--nodes=2" in two_nodes and "--gres=gpu:4" in two_nodes and "--gpus" not in two_nodes
    assert "--ntasks-per-gpu" not in two_nodes
