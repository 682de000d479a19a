# Training: one job per (model, run, alpha, seed); alpha-independent objectives are trained once. Checkpoints
# live outside the job's outputs ({R}/checkpoints), so a failed or cancelled job keeps them and the rerun resumes.


rule train:
    input:
        model=f"{R}/models/{{model}}",
        train=f"{R}/data/train_seed{{seed}}.jsonl",
        val=f"{R}/data/val_seed{{seed}}.jsonl",
    output:
        model=trained_model(f"{R}/train/{{model}}/{{run_id}}/seed{{seed}}/model"),
        log_csv=f"{R}/train/{{model}}/{{run_id}}/seed{{seed}}/log.csv",
        summary=f"{R}/train/{{model}}/{{run_id}}/seed{{seed}}/summary.json",
    log:
        f"{R}/logs/train/{{model}}/{{run_id}}/seed{{seed}}.log",
    priority: 10  # the long pole: start training before evaluating the base model
    conda:
        STACK_ENV
    threads: model_resources("train_resources")("threads")
    resources:
        gpu=model_resources("train_resources")("gpus"),
        mem_mb=model_resources("train_resources")("mem_mb"),
        runtime=model_resources("train_resources")("runtime"),
    params:
        settings=lambda w: pspo_config.grpo_settings(CFG, train_job(w)),
        checkpoint_dir=lambda w: f"{R}/checkpoints/{w.model}/{w.run_id}/seed{w.seed}",
        reward=CFG["training"]["reward"],
        keep_checkpoints=CFG["training"]["keep_checkpoints"],
        keep_after=CFG["training"]["keep_checkpoints_after_training"],
        system_prompt=lambda w: CFG["models"][w.model]["system_prompt"],
        require_gpu=lambda w: CFG["models"][w.model]["train_resources"]["gpus"] > 0,
    script:
        "../scripts/train.py"
