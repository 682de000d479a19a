"""Resume through the workflow: kill -9 a training job mid-run, rerun the same snakemake command.

The rerun must continue from the last saved checkpoint (optimizer, scheduler, RNG and data order included) and,
on CPU, end with the same training log and the same final weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from safetensors.torch import load_file

from conftest import REPO

pytestmark = pytest.mark.slow

RUN = "smollm2-135m/pspo-a0.1/seed0"
# Four optimiser steps, a checkpoint after each, so there is a mid-run checkpoint to resume from.
OVERRIDES = ["training={grpo: {max_steps: 4, save_steps: 1}, keep_checkpoints: 4}"]


def command(results: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", f"{results}/train/{RUN}/log.csv", "--cores", "2",
            "--configfile", "config/ci.yaml", "--config", f"results_dir={results}", *OVERRIDES]


def run(results: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(results), cwd=REPO, capture_output=True, text=True, timeout=3600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-6000:])
    return proc


def training_job_processes(snakemake_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(snakemake_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if any("train.py" in part for part in p.cmdline())]


def comparable(log: pd.DataFrame) -> pd.DataFrame:
    return log.drop(columns=[c for c in log.columns if c in ("step_time",) or "runtime" in c or "per_second" in c])


def test_killed_training_job_resumes_and_matches_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(straight)

    proc = subprocess.Popen(command(killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / RUN / "checkpoint-2"
    deadline = time.time() + 1800
    while not (checkpoint / "trainer_state.json").is_file():
        assert proc.poll() is None, "snakemake ended before the first checkpoints were written"
        assert time.time() < deadline, "no checkpoint-2 within 30 minutes"
        time.sleep(0.5)
    jobs = training_job_processes(proc.pid)
    assert jobs, "the training job process was not found"
    for job in jobs:
        job.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=600) != 0  # snakemake reports the failed job
    assert not (killed / "train" / RUN / "log.csv").exists()  # the failed job's outputs are removed ...
    assert checkpoint.is_dir()  # ... but its checkpoints are not

    run(killed)  # the same command again
    summary = json.loads((killed / "train" / RUN / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_at_step"] >= 2
    assert summary["steps"] == 4

    pd.testing.assert_frame_equal(
        comparable(pd.read_csv(killed / "train" / RUN / "log.csv")),
        comparable(pd.read_csv(straight / "train" / RUN / "log.csv")),
    )
    a = load_file(killed / "train" / RUN / "model" / "model.safetensors")
    b = load_file(straight / "train" / RUN / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
