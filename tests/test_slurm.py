"""The SLURM profile (slurm/config.yaml) against a real one-node SLURM cluster (tests/slurm_cluster.py).

* test_profile_runs_tiny_workflow_through_sbatch: a 4-rule temp-dir workflow (one local rule), ~35 s.
* test_scancelled_job_is_resumed_by_next_run_tiny: a checkpointing toy job is scancelled; the next run of the
  same command resumes it from its last checkpoint, ~70 s.
* test_ci_workflow_through_slurm (slow): the real DAG with config/ci.yaml, a slice with every kind of job (the
  whole grid with PSPO_SLURM_FULL=1); every non-local job must go through sbatch, every output of the DAG must
  exist afterwards.
* test_cancelled_training_resumes_from_checkpoint (slow): scancel the CI training job (pspo.train) once it has
  written a checkpoint; the next run of the same command resumes from that checkpoint (summary resumed_from).

Only the test cluster's quirks are passed on the command line (cluster_args); everything else comes from the
user-facing profile. Needs root and `.ci/install-slurm.sh`; skipped without SLURM unless CI is set (then it
fails).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_cluster import SlurmCluster, require_slurm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

# "Job 4 has been submitted with SLURM jobid 2 (log: /x/.snakemake/slurm_logs/rule_compute/2/2.log)."
SUBMITTED_RE = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", re.M)
# "rule compute:" / "localrule fetch:" followed by indented fields, one of them "jobid: N".
JOB_BLOCK_RE = re.compile(r"^(local)?rule (\w+):\n((?:    .*\n)+)", re.M)
FINISHED_RE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$", re.M)


def cluster_args(cluster: SlurmCluster) -> list[str]:
    """Command-line overrides for the throw-away cluster only (no slurmdbd, no accounts, fast polling)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    defaults = dict(profile.get("default-resources") or {})
    defaults["slurm_partition"] = cluster.partition
    defaults.pop("slurm_account", None)  # no account: the plugin's guess fails quietly and sbatch gets no -A
    default_resources = [f"{k}={v}" for k, v in defaults.items() if v not in ("", None)]
    return [
        # No accounting database: sacct cannot see jobs, squeue can (MinJobAge 7200 s >= 3 x 2 s).
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        # Declared by the plugin (2.6.1) but not read anywhere in it; harmless, and right once it is implemented.
        "--slurm-no-account",
        "--default-resources", *default_resources,
    ]


def run_snakemake(cluster: SlurmCluster, workdir: Path, *args: str, timeout: float = 900,
                  log: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--profile", str(PROFILE), *args, *cluster_args(cluster)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=cluster.env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if log is not None:
        log.write_text(f"$ {shlex.join(cmd)}\n# {time.monotonic() - t0:.1f}s rc={proc.returncode}\n{out}")
    proc.output = out
    return proc


def job_blocks(output: str) -> dict[str, tuple[str, bool]]:
    """Snakemake job id -> (rule, is_local), for every job Snakemake started or finished. Local jobs print a
    "localrule" block; the SLURM plugin (2.6.1) prints none for the jobs it submits, so those are the finished jobs
    ("Finished jobid: N (Rule: r)") that had no local block."""
    jobs = {}
    for m in JOB_BLOCK_RE.finditer(output):
        jid = re.search(r"^    jobid: (\d+)$", m.group(3), re.M)
        if jid:
            jobs[jid.group(1)] = (m.group(2), bool(m.group(1)))
    for m in FINISHED_RE.finditer(output):
        jobs.setdefault(m.group(1), (m.group(2), False))
    return jobs


def assert_every_remote_job_went_through_sbatch(cluster: SlurmCluster, output: str) -> dict[str, str]:
    """Returns {snakemake job id: SLURM job id}; checks squeue, the plugin's logs and that local rules stayed local."""
    jobs = job_blocks(output)
    submitted = {m.group(1): (m.group(2), Path(m.group(3))) for m in SUBMITTED_RE.finditer(output)}
    remote = {jid for jid, (_, local) in jobs.items() if not local}
    local = {jid for jid, (_, is_local) in jobs.items() if is_local}
    assert remote, f"no job was submitted to SLURM:\n{output[-3000:]}"
    assert "Falling back to 'sacct'" not in output, "the plugin ignored --slurm-status-command squeue"
    assert remote == set(submitted), (
        f"non-local jobs without an sbatch submission: {sorted(remote - set(submitted))}; "
        f"submissions of local jobs: {sorted(set(submitted) - remote)}\n{output[-3000:]}")
    assert not (local & set(submitted))
    slurm_ids = {sid for sid, _ in submitted.values()}
    assert len(slurm_ids) == len(submitted), "two Snakemake jobs share one SLURM job id"
    queue = {j["id"]: j for j in cluster.jobs()}
    for sm_id, (slurm_id, logfile) in submitted.items():
        rule = jobs[sm_id][0]
        assert slurm_id in queue, f"SLURM job {slurm_id} ({rule}) unknown to squeue: {queue}"
        assert queue[slurm_id]["state"] == "COMPLETED", queue[slurm_id]
        assert queue[slurm_id]["comment"].startswith(f"rule_{rule}"), queue[slurm_id]
        # The profile keeps the plugin's per-job logs (slurm-keep-successful-logs); each one is the job's own
        # Snakemake run inside SLURM.
        assert logfile.is_file(), f"missing SLURM log {logfile}"
        assert logfile.stem == slurm_id
        assert f"rule {rule}:" in logfile.read_text(errors="replace")
    return {sm: sid for sm, (sid, _) in submitted.items()}


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    require_slurm()
    # A short path (the default mkdtemp under /tmp), not pytest's long tmp path: munge/slurm sockets and the
    # configless conf-cache live below it.
    cluster = SlurmCluster()
    t0 = time.monotonic()
    try:
        cluster.start()
    except Exception as e:  # a broken installation is a failure, never a skip
        cluster.cleanup()
        pytest.fail(f"could not start the SLURM test cluster: {e}", pytrace=False)
    print(f"SLURM test cluster up in {time.monotonic() - t0:.1f}s ({cluster.conf_path})")
    yield cluster
    cluster.cleanup()


# ---------------------------------------------------------------------------------------------- the mechanism

TINY_SNAKEFILE = """\
localrules: fetch, all

rule all:
    input: "out/final.txt"

# Stands for the model/dataset download: must run on the submitting node (internet), not under SLURM.
rule fetch:
    output: "out/raw.txt"
    shell: "echo SLURM_JOB_ID=${{SLURM_JOB_ID:-none}} > {output}"

rule compute:
    input: "out/raw.txt"
    output: "out/part{i}.txt"
    threads: 1
    resources: mem_mb=200, runtime=5
    shell: "cat {input} > {output}; echo SLURM_JOB_ID=$SLURM_JOB_ID >> {output}"

rule final:
    input: expand("out/part{i}.txt", i=[1, 2])
    output: "out/final.txt"
    resources: mem_mb=200, runtime=5
    shell: "echo SLURM_JOB_ID=$SLURM_JOB_ID > {output}"
"""


def test_profile_runs_tiny_workflow_through_sbatch(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    t0 = time.monotonic()
    proc = run_snakemake(slurm_cluster, tmp_path, "--jobs", "2", log=tmp_path / "snakemake.log")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.output[-5000:]
    submitted = assert_every_remote_job_went_through_sbatch(slurm_cluster, proc.output)
    jobs = job_blocks(proc.output)
    assert sorted(jobs[j][0] for j in submitted) == ["compute", "compute", "final"]
    assert {r for r, local in jobs.values() if local} == {"fetch", "all"}
    # The local rule really ran outside SLURM, the others inside the job that squeue reported.
    assert (tmp_path / "out/raw.txt").read_text().strip() == "SLURM_JOB_ID=none"
    ids_in_outputs = {
        (tmp_path / f"out/{name}.txt").read_text().strip().splitlines()[-1].split("=")[1]
        for name in ("part1", "part2", "final")
    }
    assert ids_in_outputs == set(submitted.values())
    print(f"tiny workflow through SLURM: {elapsed:.1f}s")


TINY_RESUME_SNAKEFILE = """\
# A 'training' job that checkpoints to ckpt/ (outside its outputs) once a second and resumes from the latest.
rule train:
    output: "out/summary.json"
    threads: 1
    resources: mem_mb=200, runtime=5
    run:
        import json, os, time
        os.makedirs("ckpt", exist_ok=True)
        done = sorted(int(n.split("-")[1]) for n in os.listdir("ckpt"))
        start = done[-1] if done else 0
        for step in range(start + 1, 13):
            time.sleep(1)
            os.makedirs(f"ckpt/checkpoint-{step}")
        with open(output[0], "w") as f:
            json.dump({"resumed_from": f"ckpt/checkpoint-{start}" if start else None,
                       "slurm_job": os.environ.get("SLURM_JOB_ID")}, f)
"""


def _scancel_when(cluster: SlurmCluster, cmd: list[str], cwd: Path, log_path: Path, rule: str, ready,
                  timeout: float = 900) -> tuple[int, str]:
    """Run cmd; once a `rule` job is RUNNING under SLURM and ready() is true, scancel it. -> (rc, SLURM id)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            job = None
            while time.monotonic() < deadline and proc.poll() is None:
                running = [j for j in cluster.jobs(states="running") if j["comment"].startswith(f"rule_{rule}")]
                if running and ready():
                    job = running[0]["id"]
                    cluster.run("scancel", job)
                    break
                time.sleep(0.5)
            assert job, f"no running, ready {rule} job within {timeout:.0f}s\n{log_path.read_text()[-5000:]}"
            return proc.wait(timeout=600), job
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_scancelled_job_is_resumed_by_next_run_tiny(slurm_cluster, tmp_path):
    """The SLURM side of 'a cancelled training job resumes from its last checkpoint', without the model."""
    (tmp_path / "Snakefile").write_text(TINY_RESUME_SNAKEFILE)
    args = ["--restart-times", "0", "--jobs", "1"]
    cmd = [*SNAKEMAKE, "--profile", str(PROFILE), *args, *cluster_args(slurm_cluster)]
    ckpt = tmp_path / "ckpt"
    rc, job = _scancel_when(slurm_cluster, cmd, tmp_path, tmp_path / "first.log", "train",
                            lambda: ckpt.is_dir() and len(list(ckpt.iterdir())) >= 3)
    assert rc != 0, (tmp_path / "first.log").read_text()[-3000:]
    assert {j["id"]: j["state"] for j in slurm_cluster.jobs()}[job] == "CANCELLED"
    assert not (tmp_path / "out/summary.json").exists()
    last = max(int(p.name.split("-")[1]) for p in ckpt.iterdir())
    assert 3 <= last < 12
    second = run_snakemake(slurm_cluster, tmp_path, *args, log=tmp_path / "second.log")
    assert second.returncode == 0, second.output[-5000:]
    submitted = assert_every_remote_job_went_through_sbatch(slurm_cluster, second.output)
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["resumed_from"] == f"ckpt/checkpoint-{last}"
    assert summary["slurm_job"] in submitted.values() and summary["slurm_job"] != job


# ---------------------------------------------------------------------------------------------- the real DAG

def require_real_workflow() -> None:
    missing = [p for p in ("Snakefile", "config/ci.yaml") if not (REPO / p).is_file()]
    if missing:
        pytest.fail(f"the workflow is incomplete, missing {missing}", pytrace=False)


def ci_args(results_dir: Path, *overlays: str | Path) -> list[str]:
    """--configfile/--config for the CI grid (+ overlay YAML files, merged in order); put targets BEFORE these
    (--config swallows what follows it). Overlays are files because `--config a={b: 1}` passes 1 as a string."""
    # --nolock: outputs go to a private temp dir, and a killed test must not leave a lock in the shared checkout.
    return ["--nolock", "--configfile", "config/ci.yaml", *map(str, overlays), "--config", f"results_dir={results_dir}"]


def summary_paths(summary: str) -> list[Path]:
    lines = [line.split("\t") for line in summary.splitlines() if "\t" in line]
    header, rows = lines[0], lines[1:]
    return [Path(row[header.index("output_file")]) for row in rows]


# Local-rule outputs of the CI run (converted model, data), reused by the resume test to save ~80 s of GGUF
# conversion; filled by ci_results when it ran.
_PREPARED: dict[str, Path] = {}


def dry_run_jobs(results: Path, *args: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """(rule, wildcards, outputs) of every job a dry run of the CI grid plans."""
    dry = subprocess.run([*SNAKEMAKE, "--dry-run", *ci_args(results), *args], cwd=REPO, capture_output=True,
                         text=True)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    jobs = []
    for m in JOB_BLOCK_RE.finditer(dry.stdout):
        fields = dict(re.findall(r"^    (\w+): (.*)$", m.group(3), re.M))
        wildcards = dict(kv.split("=", 1) for kv in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        jobs.append((m.group(2), wildcards, fields.get("output", "").split(", ")))
    return jobs


def ci_slice_targets(results: Path) -> list[str]:
    """A slice of the CI DAG with every kind of job: the local rules (model, data), one training run (GR-PSPO) and
    the greedy gsm8k evaluation of it and of the base model, with the preflight they wait for (the test's default;
    PSPO_SLURM_FULL=1 runs the whole CI grid: 5 trainings, 26 evaluations, the report)."""
    jobs = dry_run_jobs(results)
    train = next((j for j in jobs if j[0] == "train" and j[1]["run_id"].startswith("pspo")),
                 next(j for j in jobs if j[0] == "train"))
    tag = f"{train[1]['run_id']}_seed{train[1]['seed']}"
    evals = [j for j in jobs if j[0] == "evaluate" and j[1].get("benchmark") == "gsm8k"
             and j[1].get("tag") in ("base", tag) and float(j[1].get("temperature", "nan")) == 0]
    assert len(evals) == 2, evals
    return [o for _, _, outs in [train, *evals] for o in outs if o.endswith((".json", ".csv"))]


@pytest.fixture(scope="module")
def ci_results(slurm_cluster, tmp_path_factory):
    """A slice of the CI config through SLURM (the whole grid with PSPO_SLURM_FULL=1; the whole DAG runs locally in
    tests/test_workflow.py, the miniature paper grid)."""
    require_real_workflow()
    results = tmp_path_factory.mktemp("slurm-ci") / "results"
    log = results.parent / "snakemake.log"
    targets = [] if os.environ.get("PSPO_SLURM_FULL") else ci_slice_targets(results)
    t0 = time.monotonic()
    proc = run_snakemake(slurm_cluster, REPO, *targets, *ci_args(results), "--jobs", "2",
                         "--slurm-logdir", str(results.parent / "slurm_logs"), timeout=3600, log=log)
    elapsed = time.monotonic() - t0
    print(f"CI {'slice' if targets else 'grid'} through SLURM: {elapsed:.1f}s (log: {log})")
    if proc.returncode == 0:
        _PREPARED["results"] = results
    return results, targets, proc, elapsed


@pytest.mark.slow
def test_ci_workflow_through_slurm(slurm_cluster, ci_results):
    results, targets, proc, elapsed = ci_results
    assert proc.returncode == 0, proc.output[-8000:]
    assert_every_remote_job_went_through_sbatch(slurm_cluster, proc.output)
    rules = {rule for rule, local in job_blocks(proc.output).values() if not local}
    assert {"train", "evaluate"} <= rules, rules
    # Every output of the DAG (`snakemake --summary`: all outputs of all jobs, the targets of rule `all`
    # included) exists, and nothing is left to do.
    summary = subprocess.run([*SNAKEMAKE, "--summary", *targets, *ci_args(results)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    outputs = summary_paths(summary)
    assert len(outputs) >= (8 if targets else 40), summary[-3000:]
    missing = [p for p in outputs if not (REPO / p).exists()]
    assert not missing, f"missing outputs: {missing[:20]}"
    dry = subprocess.run([*SNAKEMAKE, "--dry-run", *targets, *ci_args(results)], cwd=REPO, capture_output=True,
                         text=True)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
    if targets:
        assert elapsed < 900, f"the SLURM CI slice took {elapsed:.0f}s"


# ---------------------------------------------------------------------------------------------- scancel + resume

def _train_target(results: Path, *overlays: Path) -> tuple[dict[str, str], Path, Path]:
    """(wildcards, summary.json, checkpoint dir) of one CI training job (GR-PSPO if there is one), from a dry run."""
    dry = subprocess.run([*SNAKEMAKE, "--dry-run", "--until", "train", *ci_args(results, *overlays)], cwd=REPO,
                         capture_output=True, text=True)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    jobs = []
    for m in JOB_BLOCK_RE.finditer(dry.stdout):
        if m.group(2) != "train":
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", m.group(3), re.M))
        wildcards = dict(kv.split("=", 1) for kv in fields["wildcards"].split(", "))
        summary = next(Path(o) for o in fields["output"].split(", ") if o.endswith("summary.json"))
        jobs.append((wildcards, summary))
    assert jobs, f"no train job in the CI DAG:\n{dry.stdout[-3000:]}"
    wildcards, summary = next((j for j in jobs if j[0]["run_id"].startswith("pspo")), jobs[0])
    # workflow/rules/train.smk: checkpoint_dir = {R}/checkpoints/{model}/{run_id}/seed{seed}
    ckpt = results / "checkpoints" / wildcards["model"] / wildcards["run_id"] / f"seed{wildcards['seed']}"
    return wildcards, (summary if summary.is_absolute() else REPO / summary), ckpt


def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """checkpoint-N dirs whose trainer_state.json is readable (HF writes it last, so the checkpoint is whole)."""
    done = []
    for d in ckpt_dir.glob("checkpoint-*"):
        try:
            json.loads((d / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        done.append(d)
    return sorted(done, key=lambda d: int(d.name.rsplit("-", 1)[1]))


@pytest.mark.slow
def test_cancelled_training_resumes_from_checkpoint(slurm_cluster, tmp_path):
    require_real_workflow()
    results = tmp_path / "results"
    # Enough steps that the job is still running when its first checkpoint appears; one checkpoint per step.
    overlay = tmp_path / "resume.yaml"
    overlay.write_text(yaml.safe_dump({"training": {"grpo": {"max_steps": 3, "save_steps": 1}}}))
    wildcards, summary_json, ckpt_dir = _train_target(results, overlay)
    if "results" in _PREPARED:  # outputs of local rules only, with their mtimes, so Snakemake keeps them
        for sub in ("models", "data"):
            shutil.copytree(_PREPARED["results"] / sub, results / sub, symlinks=True)
    args = [str(summary_json), *ci_args(results, overlay),  # targets first: --config takes nargs=*
            # The profile's restart-times would resubmit the cancelled job inside the same run (which also
            # resumes); here the *next run* has to do it.
            "--restart-times", "0", "--jobs", "1"]
    cmd = [*SNAKEMAKE, "--profile", str(PROFILE), *args, *cluster_args(slurm_cluster)]
    first_log = tmp_path / "first.log"
    t0 = time.monotonic()
    # Wait for the train job to run under SLURM and to have written a complete checkpoint, then scancel it.
    rc, train_job = _scancel_when(slurm_cluster, cmd, REPO, first_log, "train",
                                  lambda: bool(_complete_checkpoints(ckpt_dir)))
    cancelled_at = time.monotonic() - t0
    first_out = first_log.read_text()
    assert rc != 0, f"the first run should fail after scancel\n{first_out[-5000:]}"
    assert not summary_json.exists(), "the cancelled job must not leave a finished summary"
    checkpoints = _complete_checkpoints(ckpt_dir)
    assert checkpoints, "the cancelled job's checkpoints must survive (they are not Snakemake outputs)"
    last = checkpoints[-1]
    state = {j["id"]: j["state"] for j in slurm_cluster.jobs()}
    assert state.get(train_job) == "CANCELLED", state

    # The next run of the same command: resumes from the last complete checkpoint and finishes.
    second = run_snakemake(slurm_cluster, REPO, *args, log=tmp_path / "second.log")
    assert second.returncode == 0, second.output[-8000:]
    assert_every_remote_job_went_through_sbatch(slurm_cluster, second.output)
    summary = json.loads(summary_json.read_text())
    resumed = summary.get("resumed_from")
    assert resumed, f"summary has no resumed_from: {summary}"
    assert Path(resumed).name == last.name, (resumed, [c.name for c in checkpoints])
    model_dir = summary_json.parent / "model"
    assert (summary_json.parent / "log.csv").is_file() and model_dir.is_dir()
    train_log = results / "logs" / "train" / wildcards["model"] / wildcards["run_id"] / f"seed{wildcards['seed']}.log"
    if train_log.is_file():
        assert last.name in train_log.read_text(errors="replace")
    print(f"scancel after {cancelled_at:.1f}s at {last.name}; resumed in {tmp_path / 'second.log'}")
