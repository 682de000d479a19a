"""Thin adapter: the evaluated rows of one benchmark (pspo.data)."""
from pspo.data import write_eval_rows
from pspo.workflow import run_job

run_job(snakemake, lambda: write_eval_rows(out=snakemake.output.rows, **snakemake.params.selection))
