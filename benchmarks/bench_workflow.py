"""Snakemake planning speed: `snakemake -n` on the paper grid, and a no-op rerun of a finished run.

Targets (issue 5): the paper-grid dry run (hundreds of jobs) in <= 5 s; a no-op rerun of a finished CPU run in
<= 5 s. Prints the job count and both times, best of --repeats, measured in this run.

    python benchmarks/bench_workflow.py                                   # finished run: results/cpu
    python benchmarks/bench_workflow.py --configfile config/ci.yaml --results-dir /tmp/ci   # builds it if missing
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default="config/cpu.yaml", help="the finished run's config")
    p.add_argument("--results-dir", default=None, help="its results_dir (default: the config's)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    times, out = zip(*(snakemake("-n", "--quiet", "rules") for _ in range(a.repeats)))
    total = re.search(r"^total\s+(\d+)", out[-1], re.M)
    jobs = int(total.group(1)) if total else -1
    print(f"paper grid dry run: {jobs} jobs planned in {min(times):.2f} s (best of {a.repeats}; target <= 5 s)")

    extra = ["--configfile", a.configfile] + (["--config", f"results_dir={a.results_dir}"] if a.results_dir else [])
    _, out = snakemake("-n", *extra)
    if "Nothing to be done" not in out:
        print(f"building the finished run first ({a.configfile}) ...", flush=True)
        snakemake(*extra)
    times, outs = zip(*(snakemake(*extra) for _ in range(a.repeats)))
    assert all("Nothing to be done" in o for o in outs), "the rerun had work to do"
    print(f"no-op rerun of {a.configfile}: {min(times):.2f} s (best of {a.repeats}; target <= 5 s)")


if __name__ == "__main__":
    main()
