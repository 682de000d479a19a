# Config validation and the job grid. The grid logic lives in pspo.config so tests can call it without Snakemake.
import os
import re
import sys
from pathlib import Path

_SRC = str(Path(workflow.basedir) / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
# Jobs (local, conda or SLURM) import the same package from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p
)

from pspo import config as pspo_config
from pspo.errors import PSPOError

try:
    CFG = pspo_config.load_config(
        config, Path(workflow.basedir) / "config" / "config.schema.yaml"
    )
except PSPOError as error:
    sys.exit(f"error: {error}")

R = CFG["results_dir"]
MODELS = list(CFG["models"])
TRAIN_JOBS = pspo_config.train_jobs(CFG)
EVAL_JOBS = pspo_config.eval_jobs(CFG)
BASE = pspo_config.BASE


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    run_id=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    seed=r"\d+",
    benchmark="gsm8k|svamp|asdiv|math500",
    temperature=r"[0-9.]+",
    n=r"\d+",


def train_job(wildcards):
    return pspo_config.find_train_job(
        CFG, wildcards.model, wildcards.run_id, wildcards.seed
    )


def model_resources(kind):
    """Per-model resources from the config (`train_resources` / `eval_resources`), as rule callables."""

    def get(name):
        return lambda wildcards: CFG["models"][wildcards.model][kind][name]

    return get


def train_dir(job):
    return f"{R}/train/{job.model}/{job.run_id}/seed{job.seed}"


def eval_metrics_path(job):
    return f"{R}/eval/{job.model}/{job.tag}/{job.stem}.metrics.json"


def eval_samples_path(job):
    return f"{R}/eval/{job.model}/{job.tag}/{job.stem}.samples.jsonl"
