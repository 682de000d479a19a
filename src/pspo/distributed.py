"""One training run over several processes (data parallel, one rank per GPU, or gloo ranks on a CPU).

* **Launch.** ``torchrun --standalone`` (plain data parallel, CPU or GPU), or ``accelerate launch`` with one of TRL's
  accelerate configs (``trl/accelerate_configs/<name>.yaml``: DeepSpeed ZeRO-1/2/3, FSDP1/2) for sharded training
  on GPUs. Each rank runs :func:`pspo.train.run_training` (``python -m pspo.train <spec.json>``); the
  launching process did the run's filesystem work first (stale checkpoints moved aside, a half-written one removed),
  so the ranks only read the checkpoint directory.
* **The global batch stays the config's.** The GRPO settings describe one process: ``per_device_train_batch_size
  x gradient_accumulation_steps`` completions per optimiser step. With P processes each keeps its per-device batch
  and accumulates ``gradient_accumulation_steps / P`` micro-batches (``steps_per_generation`` likewise), so
  ``per_device x (GA / P) x P`` is the one-process global batch; a GA that P does not divide is refused.
* **Rank 0 writes** the log CSV, the final model, the summary; every rank writes its own slice of TRL's
  generation buffer into each checkpoint (:class:`pspo.trainer.PSPOTrainer`), so a resume is exact.
* **Several nodes** (``nodes`` > 1, under SLURM): the job's process runs ``srun`` with one task per node, and each
  task (``python -m pspo.distributed``) starts its node's launcher with its node rank (``SLURM_NODEID``) and the
  head node's address, derived inside that step (its first host: ``SLURM_STEP_NODELIST``, as the job step plugin
  strips the job's ``SLURM_JOB_NODELIST``), so the ranks meet there. The checkpoint directory must be on a filesystem every node
  sees, as a cluster's home or project space is.
* **A rank that dies ends the job.** torchrun stops the other ranks (``--max-restarts 0``); the launcher's one line
  names the rank and its error. The launcher and every rank die with their parent (``PR_SET_PDEATHSIG``): a
  ``kill -9`` of the job leaves no rank running, and the rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from pspo.errors import PSPOError

# TRL's accelerate configs (trl/accelerate_configs/): the names a model's train_resources.accelerate_config takes.
ACCELERATE_CONFIGS = ("multi_gpu", "zero1", "zero2", "zero3", "fsdp1", "fsdp2")
# The variables a launcher sets for its ranks: never inherited from the caller's environment.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
ERROR_PREFIX = "[rank{rank}] error: "  # how a rank reports its one-line error to the launcher


def rank() -> int:
    """This process's rank (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of ranks of this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def per_process_settings(grpo: dict, processes: int) -> dict:
    """The GRPO settings of one of ``processes`` ranks, with the one-process global batch (module docstring)."""
    if processes == 1:
        return dict(grpo)
    out = dict(grpo)
    for key in ("gradient_accumulation_steps", "steps_per_generation"):
        value = grpo.get(key, 1 if key == "gradient_accumulation_steps" else None)
        if value is None:
            continue
        if value % processes:
            raise PSPOError(f"{key}={value} does not divide by {processes} processes, so the global batch "
                            f"(per_device_train_batch_size x {key}) cannot stay the same; use a multiple of "
                            f"{processes} or another process count")
        out[key] = value // processes
    return out


def global_batch(grpo: dict, processes: int = 1) -> int:
    """Completions per optimiser step: per-device batch x accumulation steps x processes."""
    return (grpo.get("per_device_train_batch_size", 8) * grpo.get("gradient_accumulation_steps", 1) * processes)


def accelerate_config_file(name: str) -> Path:
    """TRL's accelerate config ``name`` (``trl/accelerate_configs/<name>.yaml`` of the installed TRL)."""
    if name not in ACCELERATE_CONFIGS:
        raise PSPOError(f"unknown accelerate_config {name!r}; TRL ships {', '.join(ACCELERATE_CONFIGS)}")
    import trl

    path = Path(trl.__file__).parent / "accelerate_configs" / f"{name}.yaml"
    if not path.is_file():
        raise PSPOError(f"accelerate_config {name!r}: {path} is not in the installed TRL {trl.__version__}")
    return path


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(spec_path: str | os.PathLike, processes: int, accelerate_config: str | None = None, *,
                   nodes: int = 1, node_rank: int = 0, head: str | None = None, port: int | None = None) -> list[str]:
    """The command that starts one node's share of ``processes`` ranks (all of them on one node), each running
    ``python -m pspo.train spec_path``; with ``nodes`` > 1 the ranks meet at ``head:port``."""
    worker = ["-m", "pspo.train", str(spec_path)]
    if processes % nodes:
        raise PSPOError(f"{processes} processes do not split evenly over {nodes} nodes")
    per_node = processes // nodes
    if accelerate_config is None:
        where = ["--standalone"] if nodes == 1 else [
            f"--nnodes={nodes}", f"--node-rank={node_rank}", f"--master-addr={head}", f"--master-port={port}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={per_node}",
                "--max-restarts=0", *worker]
    where = ["--main_process_port", str(port or _free_port())]
    if nodes > 1:
        where += ["--machine_rank", str(node_rank), "--main_process_ip", head]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(accelerate_config_file(accelerate_config)), "--num_processes", str(processes), "--num_machines",
            str(nodes), *where, "--max_restarts", "0", *worker]


def head_node(env: dict | None = None) -> str:
    """The first host of this SLURM job step (``SLURM_STEP_NODELIST``, else ``SLURM_NODELIST``), else of the job
    (``SLURM_JOB_NODELIST``, else its NodeList from ``scontrol show job``); a bracketed list (``gpu[03-05]``) is
    expanded with ``scontrol show hostnames``."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not nodelist:
        job = env.get("SLURM_JOB_ID")
        if not job:
            raise PSPOError("a training run over several nodes runs inside a SLURM job (snakemake --profile slurm); "
                            "SLURM_JOB_ID is not set here")
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        found = re.search(r"\bNodeList=(\S+)", shown)
        if not found or found[1] == "(null)":
            raise PSPOError(f"cannot find SLURM job {job}'s nodes (`scontrol show job {job}` gave no NodeList)")
        nodelist = found[1]
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True).stdout.split()
    if not hosts:
        raise PSPOError(f"`scontrol show hostnames {nodelist}` named no host")
    return hosts[0]


def nodes_command(spec_path: str | os.PathLike, processes: int, accelerate_config: str | None, nodes: int,
                  port: int, gpus_per_node: int = 0) -> list[str]:
    """``srun``: one task per node of this job (with its GPUs), each starting its node's launcher
    (:func:`_node_main`); ``--overlap`` shares the resources of the job step this runs in."""
    gpus = [f"--gres=gpu:{gpus_per_node}"] if gpus_per_node else []
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--overlap", *gpus,
            "--kill-on-bad-exit=1", "--export=ALL", sys.executable, "-m", "pspo.distributed", str(spec_path),
            str(processes), str(nodes), str(port), accelerate_config or "-"]


def _node_main(argv: list[str]) -> None:
    """One node's task under ``srun`` (:func:`nodes_command`): start this node's launcher and wait for it."""
    die_with_parent()
    spec, processes, nodes, port, accelerate_config = argv
    cmd = launch_command(spec, int(processes), None if accelerate_config == "-" else accelerate_config,
                         nodes=int(nodes), node_rank=int(os.environ.get("SLURM_NODEID", "0")), head=head_node(),
                         port=int(port))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    sys.exit(subprocess.run(cmd, env=env, preexec_fn=die_with_parent).returncode)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def failure_line(output: str, processes: int, returncode: int) -> str:
    """One line for a launcher that exited with ``returncode``: the first rank's own error, else the rank
    torchrun names as the root cause with its exit code, else the launcher's exit code."""
    own = re.search(r"^\[rank(\d+)\] error: (.+)$", output, flags=re.M)
    if own:
        return f"training rank {own[1]} of {processes} failed: {own[2]}"
    cause = output.split("Root Cause", 1)[-1]
    died = re.search(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", cause, flags=re.S)
    if died:
        code = int(died[2])
        how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit code {code}"
        return f"training rank {died[1]} of {processes} died ({how}); the job's log holds its output"
    if returncode < 0 and -returncode in signal.valid_signals():
        return f"the training launcher was killed ({signal.Signals(-returncode).name}); its ranks died with it"
    return f"the training launcher exited with code {returncode} before naming a failed rank; the job's log holds its output"


def launch(run_kwargs: dict, *, processes: int, accelerate_config: str | None, spec_path: str | os.PathLike,
           nodes: int = 1, gpus_per_node: int = 0) -> None:
    """Run ``pspo.train.run_training(**run_kwargs)`` on ``processes`` ranks (over ``nodes`` nodes of this SLURM
    job) and wait; a failure is one PSPOError line. The launcher's output is copied line by line to this process's
    stdout (the job's log)."""
    if nodes > 1:
        if not os.environ.get("SLURM_JOB_ID"):
            raise PSPOError("a training run over several nodes runs inside a SLURM job (snakemake --profile slurm); "
                            "SLURM_JOB_ID is not set here")
        cmd = nodes_command(spec_path, processes, accelerate_config, nodes, _free_port(), gpus_per_node)
    else:
        cmd = launch_command(spec_path, processes, accelerate_config)
    spec_path = Path(spec_path)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(run_kwargs, default=str))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    threads = run_kwargs.get("threads")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"launching {processes} training processes: {' '.join(cmd)}", flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=2000)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=die_with_parent)
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
        proc.wait()
    finally:
        if proc.poll() is None:  # this process is being stopped: take the ranks with it
            proc.kill()
            proc.wait()
    sys.stdout.flush()
    if proc.returncode != 0:
        raise PSPOError(failure_line("".join(tail), processes, proc.returncode))


if __name__ == "__main__":
    _node_main(sys.argv[1:])
