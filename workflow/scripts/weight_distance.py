"""Thin adapter: weight distances of a GR-PSPO model, its GRPO-noclip (mu=2) control and the base (pspo.weights)."""
from pspo.weights import write_distances
from pspo.workflow import run_job

i = snakemake.input
run_job(
    snakemake,
    lambda: write_distances(
        pspo_dir=i.pspo,
        control_dir=i.control,
        base_dir=i.base,
        out=snakemake.output[0],
        pair=snakemake.params.pair,
    ),
)
