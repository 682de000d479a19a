# Data: the seed-shuffled train/validation split (GSM8K train, or the CPU stand-in task) and the (sub)sets evaluated. Local rules: with
# data.source = hub they need the internet, which HPC compute nodes often lack.


localrules:
    split_train,
    eval_data,


rule split_train:
    input:
        data_inputs(TRAIN_POOL),
    output:
        train=out(L.TRAIN_SPLIT),
        val=out(L.VAL_SPLIT),
        train_record=out(L.record(L.TRAIN_SPLIT)),
        val_record=out(L.record(L.VAL_SPLIT)),
    log:
        out(L.LOG_SPLIT),
    conda:
        CPU_ENV
    params:
        split=pspo_config.split_settings(CFG),
    script:
        "../scripts/split_train.py"


rule eval_data:
    input:
        lambda w: data_inputs(w.benchmark),
    output:
        rows=out(L.EVAL_DATA),
        record=out(L.record(L.EVAL_DATA)),
    log:
        out(L.LOG_EVAL_DATA),
    conda:
        CPU_ENV
    params:
        selection=lambda w: pspo_config.eval_data_settings(CFG, w.benchmark),
    script:
        "../scripts/eval_data.py"
