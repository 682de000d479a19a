# Evaluation: one job per (base model or checkpoint, benchmark, temperature). The base model is evaluated once
# and shared by every comparison. Metrics are computed from the per-sample file.


rule evaluate:
    input:
        model=eval_model_dir,
        data=out(L.EVAL_DATA),
        preflight=ancient(out(L.PREFLIGHT)),
    output:
        samples=out(L.EVAL_SAMPLES),
        metrics=out(L.EVAL_METRICS),
    log:
        out(L.LOG_EVAL),
    conda:
        STACK_ENV
    threads: model_resources("eval_resources")("threads")
    resources:
        gpu=model_resources("eval_resources")("gpus"),
        mem_mb=model_resources("eval_resources")("mem_mb"),
        runtime=model_resources("eval_resources")("runtime"),
        # SLURM plugin 2.6.1 adds --ntasks-per-gpu=1 to a GPU job unless told 0: one task per GPU, and the job's
        # one `srun -n1` step would then see one of its GPUs
        tasks_per_gpu=0,
    params:
        generation=lambda w: pspo_config.generation_settings(
            CFG, float(w.temperature), int(w.n)
        ),
        system_prompt=lambda w: CFG["models"][w.model]["system_prompt"],
        require_gpu=lambda w: CFG["models"][w.model]["eval_resources"]["gpus"] > 0,
        # vLLM splits the model over the job's GPUs
        tensor_parallel_size=lambda w: max(CFG["models"][w.model]["eval_resources"]["gpus"], 1),
    script:
        "../scripts/evaluate.py"
