"""Thin adapter: one GRPO training run (pspo.train.run_training)."""
from pspo.train import run_training
from pspo.workflow import run_job

p, out = snakemake.params, snakemake.output
run_job(
    snakemake,
    lambda: run_training(
        model_dir=snakemake.input.model,
        train_file=snakemake.input.train,
        val_file=snakemake.input.val,
        output_dir=out.model,
        log_csv=out.log_csv,
        summary_json=out.summary,
        checkpoint_dir=p.checkpoint_dir,
        objective=p.objective,
        alpha=p.alpha,
        seed=p.seed,
        grpo_settings=p.grpo,
        reward=p.reward,
        system_prompt=p.system_prompt,
        keep_checkpoints=p.keep_checkpoints,
        keep_checkpoints_after_training=p.keep_after,
        require_gpu=p.require_gpu,
        threads=snakemake.threads,
        processes=p.processes,
        accelerate_config=p.accelerate_config,
        nodes=p.nodes,
        provenance_extra={"model": snakemake.wildcards.model, "run_id": snakemake.wildcards.run_id},
    ),
)
