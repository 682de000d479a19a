# Report: every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, built from the metrics files
# and training logs; results/<grid>/index.md lists them with their provenance. `snakemake --report` collects the
# same files into one HTML page.


rule figure_surrogate:
    output:
        png=report(
            f"{R}/report/figures/figure1_surrogate.png",
            category="Figures",
            caption="../report/figure1.rst",
        ),
        pdf=f"{R}/report/figures/figure1_surrogate.pdf",
    log:
        f"{R}/logs/report/figure1.log",
    conda:
        CPU_ENV
    params:
        epsilon=CFG["report"]["figure1_epsilon"],
        alpha=CFG["report"]["figure1_alpha"],
    script:
        "../scripts/figure_surrogate.py"


rule weight_distance:
    input:
        pspo=lambda w: eval_model_dir(w),
        control=lambda w: control_model_dir(w),
        base=f"{R}/models/{{model}}",
    output:
        f"{R}/control/{{model}}/{{tag}}.json",
    log:
        f"{R}/logs/control/{{model}}/{{tag}}.log",
    conda:
        CPU_ENV
    params:
        pair=lambda w: [w.tag, control_tag(w)],
    script:
        "../scripts/weight_distance.py"


rule report:
    input:
        metrics=[eval_metrics_path(job) for job in EVAL_JOBS],
        distances=[distance_path(R, job) for job, _ in CONTROL_PAIRS],
        train_logs=[f"{train_dir(job)}/log.csv" for job in TRAIN_JOBS],
        train_summaries=[f"{train_dir(job)}/summary.json" for job in TRAIN_JOBS],
        figure1=f"{R}/report/figures/figure1_surrogate.png",
    output:
        tables=report(
            expand(
                f"{R}/report/tables/{{name}}.{{ext}}",
                name=table_names(CFG),
                ext=["csv", "md", "tex"],
            ),
            category="Tables",
        ),
        figures=report(
            expand(
                f"{R}/report/figures/{{name}}.{{ext}}",
                name=[f for f in figure_names(CFG) if f != "figure1_surrogate"],
                ext=["png", "pdf"],
            ),
            category="Figures",
        ),
        index=f"{R}/index.md",
    log:
        f"{R}/logs/report/report.log",
    conda:
        CPU_ENV
    params:
        config=CFG,
    script:
        "../scripts/report.py"
