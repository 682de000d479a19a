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


rule report:
    input:
        metrics=[eval_metrics_path(job) for job in EVAL_JOBS],
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
                name=[f for f in FIGURES if f != "figure1_surrogate"],
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
