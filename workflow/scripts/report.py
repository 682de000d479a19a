"""Thin adapter: every table and figure from the metrics files and training logs (pspo.report.build_report)."""
from pspo.report import build_report
from pspo.workflow import run_job

run_job(snakemake, lambda: build_report(snakemake.params.config, index_path=snakemake.output.index))
