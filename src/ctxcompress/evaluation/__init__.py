"""Evaluation: metrics (both conventions, ROUGE), the runner, tables, bootstrap intervals and
plots."""

from .report import plot_quality_vs_ratio, replace_section
from .runner import (
    EvalResult,
    Prediction,
    breakdown_table,
    evaluate,
    markdown_table,
    markdown_tables,
)
from .significance import (
    Interval,
    difference_legend,
    difference_table,
    mean_interval,
    paired_difference,
    paired_ratio,
)

__all__ = [
    "EvalResult",
    "Interval",
    "Prediction",
    "breakdown_table",
    "difference_legend",
    "difference_table",
    "evaluate",
    "markdown_table",
    "markdown_tables",
    "mean_interval",
    "paired_difference",
    "paired_ratio",
    "plot_quality_vs_ratio",
    "replace_section",
]
