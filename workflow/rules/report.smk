# Report: every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, built from the metrics files
# and training logs; results/<grid>/index.md lists them with their provenance. `snakemake --report` collects the
# same files into one HTML page.


rule figure_surrogate:
    output:
        png=report(
            SURROGATE_FILES[0], category="Figures", caption="../report/figure1.rst"
        ),
        pdf=SURROGATE_FILES[1],
    log:
        out(L.LOG_FIGURE1),
    conda:
        CPU_ENV
    params:
        epsilon=CFG["report"]["figure1_epsilon"],
        alpha=CFG["report"]["figure1_alpha"],
    script:
        "../scripts/figure_surrogate.py"


rule weight_distance:
    input:
        pspo=eval_model_dir,
        control=control_model_dir,
        base=out(L.MODEL),
    output:
        out(L.DISTANCE),
    log:
        out(L.LOG_DISTANCE),
    conda:
        CPU_ENV
    params:
        pair=lambda w: [w.tag, control_tag(w)],
    script:
        "../scripts/weight_distance.py"


rule report:
    input:
        **plan.report_inputs(CFG),
        figure1=SURROGATE_FILES[0],
    output:
        tables=report(REPORT_FILES["tables"], category="Tables"),
        figures=report(
            [f for f in REPORT_FILES["figures"] if f not in SURROGATE_FILES],
            category="Figures",
        ),
        index=out(L.INDEX),
    log:
        out(L.LOG_REPORT),
    conda:
        CPU_ENV
    params:
        # only the config sections the report reads, so editing another one does not rerun it
        config=pspo_config.report_settings(CFG),
    script:
        "../scripts/report.py"
