"""A real, throw-away, one-node SLURM cluster for tests (munged + slurmctld + slurmd as child processes).

Usage::

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", "--wrap", "true"], env=cluster.env, check=True)

or from a shell (starts the cluster, runs the command with SLURM_CONF set, stops the cluster)::

    python tests/slurm_cluster.py -- snakemake --profile slurm ...

Needs root and the Debian packages installed by ``.ci/install-slurm.sh`` (munge, slurmctld, slurmd,
slurm-client). Nothing under /etc is written: slurm.conf, the munge key/socket, state, spool, pid and log
files all live in the cluster's directory, and client commands find the config through ``SLURM_CONF``.

One wrinkle: snakemake-executor-plugin-slurm-jobstep removes every ``SLURM_*`` variable (SLURM_CONF
included) before it calls ``srun`` inside a batch job, so the job-side ``srun`` cannot see SLURM_CONF. We
therefore run slurmd "configless" (``--conf-server``): slurmd fetches slurm.conf from slurmctld into its spool
directory and links it as ``/run/slurm/conf``, which SLURM clients fall back to when neither SLURM_CONF nor
/etc/slurm/slurm.conf exists. If /etc/slurm/slurm.conf does exist (a machine that is already configured as
a SLURM node), the job-side srun would talk to that cluster instead, so we refuse to start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "srun", "scontrol")
RUN_CONF_LINK = Path("/run/slurm/conf")
ETC_SLURM_CONF = Path("/etc/slurm/slurm.conf")
# Configless slurmd authenticates its first config request before it has read any slurm.conf, i.e. via
# munge's compiled-in default socket, so munged must listen there.
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")


class SlurmUnavailable(RuntimeError):
    """SLURM (or the root privileges it needs here) is not available on this machine."""


def missing_slurm_programs() -> list[str]:
    return [p for p in DAEMONS + CLIENTS if shutil.which(p) is None]


def require_slurm() -> None:
    """pytest helper: skip when SLURM is not installed, except under CI (CI set), where it is a failure."""
    import pytest

    problems = []
    missing = missing_slurm_programs()
    if missing:
        problems.append(f"SLURM programs not installed: {', '.join(missing)} (run .ci/install-slurm.sh)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        problems.append("the test SLURM cluster must be started as root (SlurmUser=root)")
    if ETC_SLURM_CONF.exists():
        problems.append(f"{ETC_SLURM_CONF} exists: this machine is already a SLURM node; the throw-away "
                        "cluster would clash with it")
    if not problems:
        return
    reason = "; ".join(problems)
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set but the SLURM test cluster cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _node_hardware() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) as slurmd itself detects them; fall back to os/proc values."""
    cpus, mem = os.cpu_count() or 1, 1024
    try:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
        fields = dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
        cpus, mem = int(fields["CPUs"]), int(fields["RealMemory"])
    except Exception:
        try:
            with open("/proc/meminfo") as f:
                mem = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) // 1024
        except Exception:
            pass
    return cpus, mem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One node, one (default) partition, no accounting, no cgroups; daemons run as children of this process.

    ``cpus``/``real_memory_mb`` default to what slurmd detects; larger values may be declared (slurmd runs
    with ``SlurmdParameters=config_overrides``), e.g. to let a rule that asks for 8 threads run on a 2-core CI
    runner.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        partition: str = "debug",
        cluster_name: str = "pspotest",
        cpus: int | None = None,
        real_memory_mb: int | None = None,
        min_job_age: int = 7200,
        startup_timeout: float = 90.0,
    ):
        self._own_root = root is None
        # Short path: the munge socket path must fit in sun_path (108 bytes).
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="slurm-"))
        self.partition = partition
        self.cluster_name = cluster_name
        hw_cpus, hw_mem = _node_hardware()
        self.cpus = cpus or hw_cpus
        # Leave a little headroom so slurmd never reports less memory than configured.
        self.real_memory_mb = real_memory_mb or max(256, hw_mem - 256)
        self.min_job_age = min_job_age
        self.startup_timeout = startup_timeout
        self.nodename = socket.gethostname().split(".")[0]
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.munge_socket = MUNGE_SOCKET
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, object] = {}

    # ------------------------------------------------------------------ paths / environment
    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for client commands (sbatch, squeue, snakemake ...)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        # Never inherit a surrounding job's context.
        for k in list(env):
            if k.startswith(("SLURM_JOB", "SLURM_STEP", "SBATCH_", "SRUN_")):
                env.pop(k)
        return env

    def log_path(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    # ------------------------------------------------------------------ configuration
    def write_config(self) -> None:
        for d in ("etc", "munge", "state", "spool", "log", "run"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # slurmd/slurmstepd and job scripts must be able to traverse it
        os.chmod(self.root / "munge", 0o700)
        ctld_port, slurmd_port = _free_port(), _free_port()
        conf = f"""\
# Throw-away single-node cluster written by tests/slurm_cluster.py
ClusterName={self.cluster_name}
SlurmctldHost={self.nodename}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/run/slurmctld.pid
SlurmdPidFile={self.root}/run/slurmd.pid
SlurmctldLogFile={self.log_path("slurmctld")}
SlurmdLogFile={self.log_path("slurmd")}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
LaunchParameters=use_interactive_step
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Jobs stay visible to `squeue --states=all` this long after they end: the Snakemake SLURM plugin
# needs MinJobAge >= 3 x --slurm-init-seconds-before-status-checks to use squeue instead of sacct; 2 hours keeps
# every job of a whole CI-grid run (~20 minutes) visible to the test's squeue checks.
MinJobAge={self.min_job_age}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MessageTimeout=30
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
NodeName={self.nodename} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.nodename} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.conf_path.write_text(conf)

    # ------------------------------------------------------------------ lifecycle
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self._logs[name] = log
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            start_new_session=True,  # a Ctrl-C in the test runner must not hit the daemons first
        )
        time.sleep(0.3)
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited immediately (rc={self.procs[name].returncode}); "
                               f"see {self.root / 'log'}\n{self.tail_logs()}")

    def start(self) -> "SlurmCluster":
        missing = missing_slurm_programs()
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (run .ci/install-slurm.sh)")
        if ETC_SLURM_CONF.exists():
            raise SlurmUnavailable(f"{ETC_SLURM_CONF} exists; refusing to start a second cluster on this node")
        self.write_config()
        try:
            if self._munge_works():
                pass  # a munged (e.g. the system service) already serves the default socket: use it, leave it alone
            else:
                self._start_munged()
            # -i: ignore state left by an earlier run in the same directory.
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf_path)])
            self._wait(self._ctld_up, "slurmctld to answer")
            # Configless: slurmd pulls slurm.conf from slurmctld and exposes it as /run/slurm/conf (see module doc).
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.nodename,
                                   "--conf-server", f"127.0.0.1:{self._ctld_port()}"])
            self._wait(self._node_idle, f"node {self.nodename} to become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _munge_works(self) -> bool:
        if not self.munge_socket.exists():
            return False
        try:
            cred = subprocess.run(["munge", "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            return subprocess.run(["unmunge", "-S", str(self.munge_socket)], input=cred.stdout,
                                  capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _start_munged(self) -> None:
        key = MUNGE_KEY
        if not key.is_file():
            # Packages normally create it; make a private one otherwise (munged only needs it to be 0600).
            key = self.root / "munge" / "munge.key"
            if not key.exists():
                key.write_bytes(os.urandom(1024))
                key.chmod(0o600)
        self.munge_socket.parent.mkdir(parents=True, exist_ok=True)
        if self.munge_socket.exists():  # stale socket of a dead munged
            self.munge_socket.unlink()
        self._spawn("munged", [
            "munged", "--foreground", "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.log_path('munged')}",
        ])
        self._wait(self._munge_works, "munged to answer")

    def stop(self) -> None:
        """Cancel remaining jobs, then stop the daemons we started (by pid), slurmd first, munged last."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env,
                           capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        # Remove the configless symlink if it points into our (soon deleted) directory.
        try:
            if RUN_CONF_LINK.is_symlink() and str(Path(os.readlink(RUN_CONF_LINK))).startswith(str(self.root)):
                RUN_CONF_LINK.unlink()
        except OSError:
            pass

    def cleanup(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ queries
    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def _ctld_port(self) -> int:
        for line in self.conf_path.read_text().splitlines():
            if line.startswith("SlurmctldPort="):
                return int(line.split("=", 1)[1])
        raise RuntimeError("SlurmctldPort missing from slurm.conf")

    def _ctld_up(self) -> bool:
        self._check_alive()
        return self.run("scontrol", "ping", check=False, timeout=20).returncode == 0

    def node_state(self) -> str:
        r = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=20)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _node_idle(self) -> bool:
        self._check_alive()
        state = self.node_state()
        if state.startswith(("down", "drain")) or state.endswith(("*", "~")):
            # ReturnToService=2 usually handles this; nudge it if the first registration raced us.
            self.run("scontrol", "update", f"NodeName={self.nodename}", "State=RESUME", check=False)
        return state == "idle"

    def jobs(self, states: str = "all") -> list[dict[str, str]]:
        """squeue (incl. recently finished jobs) as a list of {id, name, state, comment}."""
        r = self.run("squeue", "--noheader", f"--states={states}", "--format=%i|%j|%T|%k")
        rows = []
        for line in r.stdout.splitlines():
            jid, name, state, comment = (line.split("|", 3) + [""] * 4)[:4]
            rows.append({"id": jid.strip(), "name": name.strip(), "state": state.strip(),
                         "comment": comment.strip()})
        return rows

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} died (rc={proc.returncode})\n{self.tail_logs()}")

    def _wait(self, cond, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {self.startup_timeout:.0f}s waiting for {what}\n{self.tail_logs()}")

    def tail_logs(self, lines: int = 25) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*")):
            try:
                text = p.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                out.append(f"==> {p} <==\n" + "\n".join(text))
        return "\n".join(out)


def main(argv: list[str]) -> int:
    """`python tests/slurm_cluster.py [-- CMD ...]`: start a cluster, run CMD (default: sinfo) under it, stop."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    cmd = argv or ["sinfo"]
    with SlurmCluster() as cluster:
        print(f"SLURM test cluster up: SLURM_CONF={cluster.conf_path}", file=sys.stderr, flush=True)
        return subprocess.call(cmd, env=cluster.env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
