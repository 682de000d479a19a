"""Thin adapter: evaluate one model on one benchmark at one temperature (pspo.evaluation.evaluate)."""
from pspo.evaluation import evaluate
from pspo.workflow import run_job

g, w = snakemake.params.generation, snakemake.wildcards
run_job(
    snakemake,
    lambda: evaluate(
        model_dir=snakemake.input.model,
        benchmark=w.benchmark,
        data_file=snakemake.input.data,
        out_samples=snakemake.output.samples,
        out_metrics=snakemake.output.metrics,
        temperature=g["temperature"],
        n_samples=g["n_samples"],
        top_p=g["top_p"],
        max_new_tokens=g["max_new_tokens"],
        backend=g["backend"],
        dtype=g["dtype"],
        batch_size=g["batch_size"],
        vllm_enforce_eager=g["vllm_enforce_eager"],
        system_prompt=snakemake.params.system_prompt,
        require_gpu=snakemake.params.require_gpu,
        tensor_parallel_size=snakemake.params.tensor_parallel_size,
        threads=snakemake.threads,
        progress=False,
        provenance_extra={"model": w.model, "tag": w.tag},
    ),
)
