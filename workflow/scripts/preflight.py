"""Thin adapter: check the grid's GPU path before its jobs start (pspo.preflight)."""
from pspo.preflight import preflight
from pspo.workflow import run_job

s = snakemake.params.settings
run_job(
    snakemake,
    lambda: preflight(
        tokenizer_dir=snakemake.input.model,
        grpo=s["grpo"],
        generation=s["generation"],
        out=snakemake.output[0],
        require_gpu=s["require_gpu"],
        threads=snakemake.threads,
    ),
)
