"""The job grid a validated config implies: every training run, every evaluation, and GR-PSPO's control pairs.

A training job is (model, run, alpha, seed); an evaluation job is (model, tag, benchmark, temperature, samples),
where the tag is the base model or one training job. Where each job's files go is :mod:`pspo.layout`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pspo.config import merged_grpo
from pspo.errors import PSPOError
from pspo.layout import BASE, EVAL_STEM, TAG


def run_id(run_name: str, alpha: float | None) -> str:
    """The directory name of a trained run: the run name, plus ``-a<alpha>`` for alpha-dependent objectives."""
    return run_name if alpha is None else f"{run_name}-a{alpha:g}"


@dataclass(frozen=True)
class TrainJob:
    model: str
    run: str  # key of cfg["runs"]
    alpha: float | None
    seed: int

    @property
    def run_id(self) -> str:
        return run_id(self.run, self.alpha)

    @property
    def tag(self) -> str:
        return TAG.format(run_id=self.run_id, seed=self.seed)

    def objective(self, cfg: dict) -> str:
        return cfg["runs"][self.run]["objective"]


def model_runs(cfg: dict, model: str) -> list[str]:
    selected = cfg["models"][model]["runs"]
    return list(cfg["runs"]) if selected is None else list(selected)


def run_alphas(cfg: dict, run: str) -> list[float | None]:
    """Alpha-independent objectives are trained once, not once per alpha."""
    return list(cfg["alphas"]) if cfg["runs"][run]["objective"] == "pspo" else [None]


def train_jobs(cfg: dict) -> list[TrainJob]:
    return [
        TrainJob(model, run, alpha, seed)
        for model in cfg["models"]
        for run in model_runs(cfg, model)
        for alpha in run_alphas(cfg, run)
        for seed in cfg["seeds"]
    ]


def find_train_job(cfg: dict, model: str, run_id_: str, seed: int) -> TrainJob:
    for job in train_jobs(cfg):
        if job.model == model and job.run_id == run_id_ and job.seed == int(seed):
            return job
    known = sorted({j.run_id for j in train_jobs(cfg) if j.model == model})
    raise PSPOError(f"no training job {model}/{run_id_}/seed{seed} in this config; runs for {model}: {', '.join(known)}")


def grpo_settings(cfg: dict, job: TrainJob) -> dict[str, Any]:
    """The GRPO fields of one job (:func:`pspo.config.merged_grpo`); its objective, alpha and seed are its own
    (``job.objective(cfg)``, ``job.alpha``, ``job.seed``)."""
    return merged_grpo(cfg, job.model, job.run)


@dataclass(frozen=True)
class EvalJob:
    model: str
    tag: str  # "base" or TrainJob.tag
    benchmark: str
    temperature: float
    n_samples: int

    @property
    def stem(self) -> str:
        return EVAL_STEM.format(benchmark=self.benchmark, temperature=f"{self.temperature:g}", n=self.n_samples)


def eval_jobs(cfg: dict) -> list[EvalJob]:
    ev = cfg["evaluation"]
    jobs = []
    for model in cfg["models"]:
        tags = [BASE] + [j.tag for j in train_jobs(cfg) if j.model == model]
        jobs += [EvalJob(model, tag, b, 0.0, 1) for tag in tags for b in ev["benchmarks"]]
    sampled = ev["sampled"]
    for job in train_jobs(cfg):
        if job.run in sampled["runs"] and job.alpha in (None, cfg["main_alpha"]):
            jobs += [
                EvalJob(job.model, job.tag, b, t, sampled["n_samples"])
                for b in sampled["benchmarks"]
                for t in sampled["temperatures"]
            ]
    if sampled["runs"]:
        for model in cfg["models"]:
            jobs += [
                EvalJob(model, BASE, b, t, sampled["n_samples"]) for b in sampled["benchmarks"] for t in sampled["temperatures"]
            ]
    return jobs


# GR-PSPO's control: GRPO-noclip at mu = 2, the run the theory says GR-PSPO nearly coincides with (pspo.weights).

def control_run(cfg: dict, model: str) -> str | None:
    """The run that is GR-PSPO's control for ``model``: objective noclip with mu = 2 (None if the grid has none)."""
    for run in model_runs(cfg, model):
        if cfg["runs"][run]["objective"] != "noclip":
            continue
        settings = grpo_settings(cfg, TrainJob(model, run, None, cfg["seeds"][0]))
        if settings.get("num_iterations", 1) == 2:
            return run
    return None


def control_pairs(cfg: dict) -> list[tuple[TrainJob, TrainJob]]:
    """(GR-PSPO job, its control job) for every model, alpha and seed the grid trains both for."""
    pairs = []
    for model in cfg["models"]:
        control = control_run(cfg, model)
        if control is None:
            continue
        for job in train_jobs(cfg):
            if job.model == model and cfg["runs"][job.run]["objective"] == "pspo":
                pairs.append((job, TrainJob(model, control, None, job.seed)))
    return pairs
