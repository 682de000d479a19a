"""Training over several processes (pspo.distributed) on CPU with gloo ranks: the global batch, the launch, rank 0's
outputs, a rank's failure in one line, and an exact resume after `kill -9` of the launching process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pspo import distributed
from pspo.checkpoints import RUN_CONFIG_FILE
from pspo.errors import PSPOError
from pspo.io import read_jsonl, write_jsonl_atomic

# mu = 2; 2 processes x 4 completions x 1 micro-batch each = the one-process run's 4 x 2; a checkpoint every step.
N_STEPS = 4
SETTINGS = dict(
    learning_rate=2e-2, num_iterations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2,
    num_generations=4, max_completion_length=4, max_steps=N_STEPS, save_steps=1, logging_steps=1, bf16=False,
    gradient_checkpointing=False, temperature=1.0, warmup_steps=1, lr_scheduler_type="linear", use_cpu=True,
)
TIMING = {"step_time"}
REWARD_MODULE = "pspo_test_rewards"


# ------------------------------------------------------------------------------------------------- the batch
def test_each_process_accumulates_its_share_of_the_global_batch():
    grpo = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 16, "steps_per_generation": 16}
    for processes in (1, 2, 4, 8, 16):
        mine = distributed.per_process_settings(grpo, processes)
        assert mine["per_device_train_batch_size"] == 4
        assert mine["gradient_accumulation_steps"] == mine["steps_per_generation"] == 16 // processes
        assert distributed.global_batch(mine, processes) == distributed.global_batch(grpo, 1) == 64
    assert distributed.per_process_settings({"per_device_train_batch_size": 4}, 1) == {"per_device_train_batch_size": 4}
    with pytest.raises(PSPOError, match="gradient_accumulation_steps=16 does not divide by 3 processes"):
        distributed.per_process_settings(grpo, 3)
    with pytest.raises(PSPOError, match="gradient_accumulation_steps=1 does not divide by 2 processes"):
        distributed.per_process_settings({}, 2)


def test_launch_commands():
    plain = distributed.launch_command("spec.json", 2)
    assert plain[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in plain
    assert "--max-restarts=0" in plain and plain[-3:] == ["-m", "pspo.train", "spec.json"]
    sharded = distributed.launch_command("spec.json", 4, "zero2")
    assert sharded[1:3] == ["-m", "accelerate.commands.launch"]
    config = Path(sharded[sharded.index("--config_file") + 1])
    assert config.name == "zero2.yaml" and config.is_file() and config.parent.name == "accelerate_configs"
    assert sharded[sharded.index("--num_processes") + 1] == "4"
    with pytest.raises(PSPOError, match="unknown accelerate_config 'zero4'; TRL ships"):
        distributed.accelerate_config_file("zero4")


def test_a_failure_is_one_line_naming_the_rank():
    own = "noise\n[rank1] error: non-finite loss (nan) at step 3 (objective pspo)\nTraceback ...\n"
    assert distributed.failure_line(own, 2, 1) == "training rank 1 of 2 failed: non-finite loss (nan) at step 3 (objective pspo)"
    torchrun = textwrap.dedent("""\
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
        Root Cause (first observed failure):
        [0]:
          time      : 2026-12-04_03:00:00
          host      : node1
          rank      : 1 (local_rank: 1)
          exitcode  : -9 (pid: 1234)
        """)
    assert distributed.failure_line(torchrun, 2, 1) == \
        "training rank 1 of 2 died (signal SIGKILL); the job's log holds its output"
    assert "exited with code 3" in distributed.failure_line("nothing useful", 2, 3)
    assert distributed.failure_line("", 2, -9) == "the training launcher was killed (SIGKILL); its ranks died with it"


# ------------------------------------------------------------------------------------------------- real ranks
@pytest.fixture(scope="module")
def reward_path(tmp_path_factory) -> Path:
    """A reward with spread on a random model, importable by every rank as 'pspo_test_rewards:length_reward'."""
    root = tmp_path_factory.mktemp("rewards")
    (root / f"{REWARD_MODULE}.py").write_text(textwrap.dedent("""
        def length_reward(completions, **kwargs):
            return [len(c[0]["content"]) / 50.0 for c in completions]
    """))
    return root


@pytest.fixture(scope="module")
def train_file(data_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = read_jsonl(data_dir / "gsm8k_train.jsonl")[:16]
    write_jsonl_atomic(path, [{k: r[k] for k in ("id", "question", "answer")} for r in rows])
    return path


def _kw(root: Path, model_dir, train_file, **over) -> dict:
    kw = dict(model_dir=str(model_dir), train_file=str(train_file), val_file=None, output_dir=str(root / "model"),
              log_csv=str(root / "log.csv"), summary_json=str(root / "summary.json"),
              checkpoint_dir=str(root / "checkpoints"), objective="pspo", seed=0, grpo_settings=dict(SETTINGS),
              reward=f"{REWARD_MODULE}:length_reward", system_prompt="Be brief.", processes=2, threads=2,
              keep_checkpoints=N_STEPS, keep_checkpoints_after_training=True)
    kw.update(over)
    return kw


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def _params(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _ranks_of(spec: Path) -> list[int]:
    """Processes whose command line names ``spec`` (the launcher's torchrun and its ranks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(spec) in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, train_file, reward_path, tmp_path_factory):
    """One uninterrupted two-process run, launched from this process (as the workflow's train job launches it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", os.pathsep.join([str(reward_path), os.environ.get("PYTHONPATH", "")]))
    root = tmp_path_factory.mktemp("ddp-ref")
    from pspo.train import run_training

    try:
        summary = run_training(**_kw(root, tiny_model_dir, train_file))
    finally:
        mp.undo()
    return root, summary


def test_two_processes_train_with_the_one_process_global_batch(two_process_run):
    root, summary = two_process_run
    assert summary["processes"] == 2 and summary["steps"] == N_STEPS and summary["trained"]
    assert summary["global_batch"] == distributed.global_batch(SETTINGS, 1) == 8
    identity = json.loads((root / "checkpoints" / RUN_CONFIG_FILE).read_text())["config"]
    assert identity["processes"] == 2 and identity["grpo_settings"]["gradient_accumulation_steps"] == 1  # per rank
    assert summary["weight_change_from_base"]["relative_l2"] > 0
    rows = _rows(root / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, N_STEPS + 1))  # every step once: rank 0 alone writes
    assert sorted(p.name for p in (root / "checkpoints").glob("checkpoint-*")) == [
        f"checkpoint-{i}" for i in range(1, N_STEPS + 1)]
    for rank in (0, 1):  # every rank's slice of TRL's generation buffer, in every checkpoint
        assert (root / "checkpoints" / f"checkpoint-{N_STEPS}" / f"pspo_reuse_state_rank{rank}.pt").is_file()
    assert (root / "model" / "model.safetensors").is_file() and not list(root.glob(".model.tmp-*"))
    assert not _ranks_of(root / "checkpoints" / "launch.json")


def test_kill9_of_the_launcher_then_an_exact_resume(two_process_run, tiny_model_dir, train_file, reward_path,
                                                    tmp_path):
    """`kill -9` of the launching process once step 2's checkpoint is complete: no rank survives it, and the rerun
    resumes and ends with the uninterrupted run's parameters and log."""
    ref_root, _ = two_process_run
    kw = _kw(tmp_path, tiny_model_dir, train_file)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(reward_path), os.environ.get("PYTHONPATH", "")]))
    code = f"from pspo.train import run_training; import json; run_training(**json.loads({json.dumps(json.dumps(kw))}))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spec = tmp_path / "checkpoints" / "launch.json"
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert len(_ranks_of(spec)) == 3  # torchrun and two ranks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while _ranks_of(spec) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ranks_of(spec), "ranks outlived the killed launcher"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "summary.json").exists()
    resumed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_at_step"] >= 2 and summary["steps"] == N_STEPS
    assert _rows(tmp_path / "log.csv") == _rows(ref_root / "log.csv")
    ref, got = _params(ref_root / "model"), _params(tmp_path / "model")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_failing_rank_ends_the_run_in_one_line(tiny_model_dir, train_file, reward_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(reward_path), os.environ.get("PYTHONPATH", "")]))
    from pspo.train import run_training

    bad = dict(SETTINGS, learning_rate=float("inf"))  # every rank: a non-finite gradient step, stopped together
    with pytest.raises(PSPOError) as info:
        run_training(**_kw(tmp_path, tiny_model_dir, train_file, grpo_settings=bad))
    line = str(info.value)
    assert line.startswith("training rank ") and " of 2 " in line and "\n" not in line
    assert not _ranks_of(tmp_path / "checkpoints" / "launch.json")


def test_a_two_process_run_through_the_workflow_resumes_after_kill9(tiny_model_dir, data_dir, tmp_path):
    """`train_resources.processes: 2` through Snakemake: `kill -9` of the launcher (torchrun) fails the job in one
    line with no rank left; the next run of the same command resumes from the last checkpoint."""
    import yaml

    from conftest import REPO
    from pspo import layout

    results = tmp_path / "results"
    config = {
        "description": "two-process training", "results_dir": str(results), "software_env": "cpu",
        "data": {"source": "local", "dir": str(data_dir), "train_set": "arith", "train_size": 3800, "train_limit": 16,
                 "val_size": 4, "eval_limit": 4},
        "models": {"tiny": {"source": "local", "path": str(tiny_model_dir),
                            "train_resources": {"gpus": 0, "threads": 2, "processes": 2, "mem_mb": 4000}}},
        "runs": {"pspo": {"objective": "pspo", "grpo": {"num_iterations": 2}}},
        "alphas": [0.1], "main_alpha": 0.1, "seeds": [0],
        "training": {"keep_checkpoints": N_STEPS, "grpo": {
            k: v for k, v in SETTINGS.items() if k not in ("use_cpu", "num_iterations", "lr_scheduler_type")}},
        "evaluation": {"benchmarks": ["arith"], "sampled": {"runs": [], "temperatures": []}},
    }
    config_file = tmp_path / "two-process.yaml"
    config_file.write_text(yaml.safe_dump(config))
    job = dict(model="tiny", run_id="pspo-a0.1", seed=0)
    summary = Path(layout.path(str(results), layout.TRAIN_SUMMARY, **job))
    checkpoints = Path(layout.path(str(results), layout.CHECKPOINTS, **job))
    cmd = [sys.executable, "-m", "snakemake", str(summary), "--cores", "2", "--configfile", str(config_file)]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while not (checkpoints / "checkpoint-2" / "trainer_state.json").is_file():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        spec = checkpoints / "launch.json"
        launcher = [p for p in _ranks_of(spec)
                    if b"torch.distributed.run" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(launcher) == 1 and len(_ranks_of(spec)) == 3
        os.kill(launcher[0], signal.SIGKILL)
        output, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert "error: the training launcher was killed (SIGKILL); its ranks died with it" in output, output[-3000:]
    assert not _ranks_of(checkpoints / "launch.json") and not summary.exists()
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    done = json.loads(summary.read_text())
    assert done["resumed_from"] is not None and done["resumed_at_step"] >= 2 and done["steps"] == N_STEPS
    assert done["processes"] == 2 and done["global_batch"] == distributed.global_batch(SETTINGS, 1)
    log = Path(layout.path(str(results), layout.TRAIN_LOG, **job))
    assert [int(r["step"]) for r in _rows(log)] == list(range(1, N_STEPS + 1))


# ------------------------------------------------------------------------------------------------- several nodes
FAKE_SRUN = '''#!{python}
"""srun on one host: --ntasks tasks of the command, task i with SLURM_NODEID=SLURM_PROCID=i (each a "node")."""
import os, subprocess, sys, time
args = sys.argv[1:]
options = [a for a in args if a.startswith("--")]
command = args[len(options):]
tasks = int(next(a.split("=", 1)[1] for a in options if a.startswith("--ntasks=")))
with open(os.environ["FAKE_SRUN_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
procs = [subprocess.Popen(command, env=dict(os.environ, SLURM_NODEID=str(i), SLURM_PROCID=str(i),
                                           SLURM_STEP_NODELIST="localhost")) for i in range(tasks)]
while all(p.poll() is None for p in procs):
    time.sleep(0.1)
if any(p.poll() not in (None, 0) for p in procs):  # --kill-on-bad-exit
    for p in procs:
        p.kill()
sys.exit(max(abs(p.wait()) for p in procs))
'''


def test_the_head_node_is_the_jobs_first_host(tmp_path, monkeypatch):
    assert distributed.head_node({"SLURM_JOB_NODELIST": "gpu07,gpu09"}) == "gpu07"
    assert distributed.head_node({"SLURM_STEP_NODELIST": "gpu09", "SLURM_JOB_NODELIST": "gpu07,gpu09"}) == "gpu09"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        if sys.argv[1:3] == ["show", "job"]:
            print("JobId=42 JobName=train\\n   NodeList=gpu[03-04] BatchHost=gpu03")
        elif sys.argv[1:3] == ["show", "hostnames"] and sys.argv[3] == "gpu[03-04]":
            print("gpu03\\ngpu04")
        """))
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    # the job step plugin strips SLURM_JOB_NODELIST: the job's NodeList comes from scontrol
    assert distributed.head_node({"SLURM_JOB_ID": "42"}) == "gpu03"
    assert distributed.head_node({"SLURM_NODELIST": "gpu[03-04]"}) == "gpu03"
    with pytest.raises(PSPOError, match=r"runs inside a SLURM job \(snakemake --profile slurm\)"):
        distributed.head_node({})


def test_each_node_starts_its_share_of_the_ranks():
    cmd = distributed.launch_command("s.json", 8, nodes=2, node_rank=1, head="gpu03", port=29400)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=gpu03", "--master-port=29400", "--nproc-per-node=4"} <= set(cmd)
    sharded = distributed.launch_command("s.json", 8, "zero3", nodes=2, node_rank=1, head="gpu03", port=29400)
    assert sharded[sharded.index("--num_processes") + 1] == "8" and sharded[sharded.index("--num_machines") + 1] == "2"
    assert sharded[sharded.index("--machine_rank") + 1] == "1" and sharded[sharded.index("--main_process_ip") + 1] == "gpu03"
    srun = distributed.nodes_command("s.json", 8, None, 2, 29400, gpus_per_node=4)
    assert srun[:6] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--overlap", "--gres=gpu:4"]
    with pytest.raises(PSPOError, match="3 processes do not split evenly over 2 nodes"):
        distributed.launch_command("s.json", 3, nodes=2, node_rank=0, head="h", port=1)


def test_two_nodes_meet_at_the_head_and_train_as_one_run(two_process_run, tiny_model_dir, train_file, reward_path,
                                                         tmp_path, monkeypatch):
    """nodes: 2 inside a SLURM job, on one host: srun's two tasks (a stand-in srun that starts both here, with the
    step's node list) each start a one-rank torchrun that meets the other at the head; the run equals the one-node
    two-process run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SRUN_LOG", str(tmp_path / "srun.log"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(reward_path), os.environ.get("PYTHONPATH", "")]))
    from pspo.train import run_training

    # one thread per rank, as in the reference (2 threads over its 2 ranks): the same sums, so the same floats
    summary = run_training(**_kw(tmp_path / "run", tiny_model_dir, train_file, nodes=2, threads=1))
    assert "--ntasks=2" in (tmp_path / "srun.log").read_text()
    assert summary["processes"] == 2 and summary["steps"] == N_STEPS
    ref_root, _ = two_process_run
    assert _rows(tmp_path / "run" / "log.csv") == _rows(ref_root / "log.csv")
    ref, got = _params(ref_root / "model"), _params(tmp_path / "run" / "model")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
