"""Thin adapter: every table and figure from the rule's input files (pspo.report.build_report)."""
from pspo.report.index import build_report
from pspo.workflow import run_job

inputs = dict(snakemake.input.items())
run_job(snakemake, lambda: build_report(snakemake.params.config, inputs, index_path=snakemake.output.index))
