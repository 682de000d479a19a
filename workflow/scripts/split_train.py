"""Thin adapter: the seed-shuffled train/validation split (GSM8K, or the CPU stand-in) (pspo.data)."""
from pspo.data import write_train_split
from pspo.workflow import run_job

run_job(
    snakemake,
    lambda: write_train_split(
        seed=int(snakemake.wildcards.seed),
        out_train=snakemake.output.train,
        out_val=snakemake.output.val,
        **snakemake.params.split,
    ),
)
