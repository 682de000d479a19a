# Models: a hub model is downloaded once on the submitting node (compute nodes often have no internet); the
# packaged GGUF model is converted once to a plain HF checkpoint (the Trainer refuses a GGUF-loaded model).


localrules:
    prepare_model,


rule prepare_model:
    output:
        directory(out(L.MODEL)),
    log:
        out(L.LOG_MODEL),
    conda:
        CPU_ENV
    params:
        model=lambda w: CFG["models"][w.model],
    script:
        "../scripts/prepare_model.py"
