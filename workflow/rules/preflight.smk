# Preflight: the grid's GPU path (versions, two training steps with the weight sync into vLLM, one evaluation
# launched as a job) checked in minutes on a node like the ones the jobs get, before any of them starts. Every
# training and evaluation job waits for it; `ancient` keeps a rerun of it from rerunning them.


rule preflight:
    input:
        model=out(L.MODEL.format(model=MODELS[0])),
    output:
        out(L.PREFLIGHT),
    log:
        out(L.LOG_PREFLIGHT),
    conda:
        STACK_ENV
    threads: CFG["models"][MODELS[0]]["train_resources"]["threads"]
    resources:
        gpu=min(CFG["models"][MODELS[0]]["train_resources"]["gpus"], 1),  # one process on one GPU
        mem_mb=CFG["models"][MODELS[0]]["train_resources"]["mem_mb"],
        runtime=20,
        tasks_per_gpu=0,  # see train.smk
    params:
        settings=pspo_config.preflight_settings(CFG),
    script:
        "../scripts/preflight.py"
