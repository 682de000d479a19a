# Data: the seed-shuffled train/validation split (GSM8K train, or the CPU stand-in task) and the (sub)sets evaluated. Local rules: with
# data.source = hub they need the internet, which HPC compute nodes often lack.


localrules:
    split_train,
    eval_data,


rule split_train:
    input:
        data_inputs(TRAIN_POOL),
    output:
        train=f"{R}/data/train_seed{{seed}}.jsonl",
        val=f"{R}/data/val_seed{{seed}}.jsonl",
        train_record=f"{R}/data/train_seed{{seed}}.meta.json",
        val_record=f"{R}/data/val_seed{{seed}}.meta.json",
    log:
        f"{R}/logs/data/split_seed{{seed}}.log",
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
        rows=f"{R}/data/eval/{{benchmark}}.jsonl",
        record=f"{R}/data/eval/{{benchmark}}.meta.json",
    log:
        f"{R}/logs/data/eval_{{benchmark}}.log",
    conda:
        CPU_ENV
    params:
        selection=lambda w: pspo_config.eval_data_settings(CFG, w.benchmark),
    script:
        "../scripts/eval_data.py"
