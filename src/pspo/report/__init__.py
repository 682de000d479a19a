"""Every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, from metrics files and training logs.

* :mod:`pspo.report.plan`: which tables and figures a config gets, and the files the report reads.
* :mod:`pspo.report.collect`: the finished grid read back (metrics, training status and logs) and the statistics.
* :mod:`pspo.report.tables`: the tables as pandas frames, and their writer.
* :mod:`pspo.report.figures`: Figure 1, the training curves and the accuracy bars.
* :mod:`pspo.report.control`: GR-PSPO against its GRPO-noclip (mu = 2) control.
* :mod:`pspo.report.index`: ``build_report`` (the report rule's one call) and index.md.
"""
