"""Every table (CSV, Markdown, LaTeX) and figure (PNG, PDF) of the paper, from metrics files and training logs.

* :mod:`pspo.report.collect`: the finished grid read back (metrics, training status and logs) and the statistics.
* :mod:`pspo.report.tables`: the tables as pandas frames, and their writer.
* :mod:`pspo.report.figures`: Figure 1, the training curves and the accuracy bars.
* :mod:`pspo.report.index`: ``build_report`` (the report rule's one call) and index.md.
"""

from pspo.report.collect import NOT_TRAINED
from pspo.report.figures import figure_surrogate
from pspo.report.index import build_report
from pspo.report.tables import table_reported

__all__ = ["NOT_TRAINED", "build_report", "figure_surrogate", "table_reported"]
