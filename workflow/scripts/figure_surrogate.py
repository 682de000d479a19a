"""Thin adapter: the paper's Figure 1 (pspo.report.figures.figure_surrogate)."""
from pspo.report.figures import figure_surrogate
from pspo.workflow import run_job

run_job(
    snakemake,
    lambda: figure_surrogate(
        snakemake.output.png, snakemake.output.pdf, epsilon=snakemake.params.epsilon, alpha=snakemake.params.alpha
    ),
)
