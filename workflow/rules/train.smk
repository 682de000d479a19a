# Training: one job per (model, run, alpha, seed); alpha-independent objectives are trained once. Checkpoints
# live outside the job's outputs ({R}/checkpoints), so a failed or cancelled job keeps them and the rerun resumes.


def _train_res(w):
    return CFG["models"][w.model]["train_resources"]


rule train:
    input:
        model=out(L.MODEL),
        train=out(L.TRAIN_SPLIT),
        val=out(L.VAL_SPLIT),
        preflight=ancient(out(L.PREFLIGHT)),
    output:
        model=trained_model(out(L.TRAIN_MODEL)),
        log_csv=out(L.TRAIN_LOG),
        summary=out(L.TRAIN_SUMMARY),
    log:
        out(L.LOG_TRAIN),
    priority: 10  # the long pole: start training before evaluating the base model
    conda:
        STACK_ENV
    threads: model_resources("train_resources")("threads")
    resources:
        # one node: --gpus=N; several: N per node (--gres=gpu:N), as SLURM's --gpus counts the whole job's
        gpu=lambda w: 0 if _train_res(w)["nodes"] > 1 else _train_res(w)["gpus"],
        gres=lambda w: f"gpu:{_train_res(w)['gpus']}" if _train_res(w)["nodes"] > 1 and _train_res(w)["gpus"] else "",
        nodes=lambda w: _train_res(w)["nodes"],
        mem_mb=model_resources("train_resources")("mem_mb"),
        runtime=model_resources("train_resources")("runtime"),
        # SLURM plugin 2.6.1 adds --ntasks-per-gpu=1 to a GPU job unless told 0: one task per GPU, and the job's
        # one `srun -n1` step would then see one of its GPUs
        tasks_per_gpu=0,
    params:
        objective=lambda w: train_job(w).objective(CFG),
        alpha=lambda w: train_job(w).alpha,
        seed=lambda w: train_job(w).seed,
        grpo=lambda w: grid.grpo_settings(CFG, train_job(w)),
        checkpoint_dir=lambda w: L.train_path(R, L.CHECKPOINTS, train_job(w)),
        reward=CFG["training"]["reward"],
        keep_checkpoints=CFG["training"]["keep_checkpoints"],
        keep_after=CFG["training"]["keep_checkpoints_after_training"],
        system_prompt=lambda w: CFG["models"][w.model]["system_prompt"],
        require_gpu=lambda w: CFG["models"][w.model]["train_resources"]["gpus"] > 0,
        processes=lambda w: pspo_config.train_processes(CFG, w.model),
        accelerate_config=lambda w: _train_res(w)["accelerate_config"],
        nodes=lambda w: _train_res(w)["nodes"],
    script:
        "../scripts/train.py"
