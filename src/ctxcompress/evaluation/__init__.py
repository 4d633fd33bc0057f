"""Evaluation: metrics (both conventions, ROUGE), the runner, tables, bootstrap intervals and
plots."""

from .continuation import (
    ContinuationScore,
    continuation_nll,
    continuation_windows,
    paired_nll_difference,
)
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
    "ContinuationScore",
    "EvalResult",
    "Interval",
    "Prediction",
    "breakdown_table",
    "continuation_nll",
    "continuation_windows",
    "difference_legend",
    "difference_table",
    "evaluate",
    "markdown_table",
    "markdown_tables",
    "mean_interval",
    "paired_difference",
    "paired_nll_difference",
    "paired_ratio",
    "plot_quality_vs_ratio",
    "replace_section",
]
