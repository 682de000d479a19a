# Config validation and the job grid. The grid logic lives in pspo.grid and every path in pspo.layout, so tests
# can call them without Snakemake.
import os
import re
import sys
from pathlib import Path

# pspo is installed, not injected: the Snakemake interpreter (which runs every job's script without --sdm conda)
# has it from `pip install -e .` (install.sh), a conda env from its env file (`-e ..`).
import importlib.util

_SRC = Path(workflow.basedir) / "src"
_SPEC = importlib.util.find_spec("pspo")
if _SPEC is None:
    sys.exit(f"error: the package pspo is not installed in {sys.executable}; run `pip install -e {workflow.basedir}` "
             "(install.sh does) and start Snakemake from that environment")
if not Path(_SPEC.origin).resolve().is_relative_to(_SRC.resolve()):
    sys.exit(f"error: pspo is imported from {Path(_SPEC.origin).parent}, not this checkout's {_SRC}: the jobs would "
             f"run other code; run `pip install -e {workflow.basedir}` in this environment")

from pspo import config as pspo_config
from pspo import layout as L
from pspo.benchmarks import BENCHMARKS, GENERATED, TRAIN_SETS
from pspo import grid
from pspo.report import plan
from pspo.errors import PSPOError
from pspo.gpu_slots import bound_local_run

try:
    CFG = pspo_config.load_config(config)
except PSPOError as error:
    sys.exit(f"error: {error}")

from pspo.data import data_file, resolve_source

# data.source auto becomes local or hub here, once, so every job and record names the source it used.
CFG["data"]["source"], CFG["data"]["dir"] = resolve_source(
    CFG["data"]["source"], CFG["data"]["dir"]
)
TRAIN_POOL = TRAIN_SETS[CFG["data"]["train_set"]]
if CFG["data"]["source"] == "local":
    # A data directory missing a file is one line before any job runs, not a failed job later.
    try:
        for name in [TRAIN_POOL, *CFG["evaluation"]["benchmarks"]]:
            if name not in GENERATED:
                data_file(name, CFG["data"]["dir"])
    except PSPOError as error:
        sys.exit(f"error: {error}")


onstart:
    # snakemake --cores all on a GPU machine: at most one job per GPU, each on its own (no-op under SLURM)
    try:
        bound_local_run(workflow, most=max(
            m[kind]["gpus"] for m in CFG["models"].values() for kind in ("train_resources", "eval_resources")))
    except PSPOError as error:
        sys.exit(f"error: {error}")
    multi_node = [m for m, model in CFG["models"].items() if model["train_resources"]["nodes"] > 1]
    if multi_node and not workflow.executor_plugin.name.startswith("slurm"):
        sys.exit(f"error: models {', '.join(multi_node)} train over several nodes (train_resources.nodes > 1), "
                 "which runs under SLURM only: use --profile slurm, or set nodes: 1")


R = CFG["results_dir"]
# Conda envs (with --software-deployment-method conda): the CPU stack everywhere, the chosen stack for training
# and evaluation.
CPU_ENV = "../../envs/cpu.yaml"
STACK_ENV = f"../../envs/{CFG['software_env']}.yaml"
MODELS = list(CFG["models"])
TRAIN_JOBS = grid.train_jobs(CFG)
EVAL_JOBS = grid.eval_jobs(CFG)
CONTROL_PAIRS = grid.control_pairs(CFG)


def out(template):
    """A results-layout template (pspo.layout) under this grid's results_dir, as a wildcard pattern."""
    return f"{R}/{template}"


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    run_id=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    seed=r"\d+",
    benchmark="|".join(BENCHMARKS),
    temperature=r"[0-9.]+",
    n=r"\d+",


def train_job(wildcards):
    return grid.find_train_job(
        CFG, wildcards.model, wildcards.run_id, wildcards.seed
    )


def model_resources(kind):
    """Per-model resources from the config (`train_resources` / `eval_resources`), as rule callables."""

    def get(name):
        return lambda wildcards: CFG["models"][wildcards.model][kind][name]

    return get


def data_inputs(name):
    """Local JSONL sources are inputs, so editing a data file reruns what depends on it."""
    if CFG["data"]["source"] != "local" or name in GENERATED:
        return []
    return [str(data_file(name, CFG["data"]["dir"]))]


def trained_model(path):
    """The trained model directory: a temporary output when training.keep_models is false (CPU grids)."""
    model_dir = directory(path)
    return model_dir if CFG["training"]["keep_models"] else temp(model_dir)


def eval_model_dir(wildcards):
    return L.eval_model_dir(R, wildcards.model, wildcards.tag)


def _control_of(wildcards):
    for job, control in CONTROL_PAIRS:
        if job.model == wildcards.model and job.tag == wildcards.tag:
            return control
    raise ValueError(
        f"{wildcards.model}/{wildcards.tag} has no GRPO-noclip (mu=2) control in this config"
    )


def control_tag(wildcards):
    return _control_of(wildcards).tag


def control_model_dir(wildcards):
    return L.train_path(R, L.TRAIN_MODEL, _control_of(wildcards))


REPORT_FILES = L.report_files(R, plan.table_names(CFG), plan.figure_names(CFG))
SURROGATE_FILES = L.report_files(R, [], [plan.SURROGATE_FIGURE])["figures"]  # its own rule


def report_outputs():
    return REPORT_FILES["tables"] + REPORT_FILES["figures"] + [out(L.INDEX)]
