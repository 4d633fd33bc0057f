"""Evaluation: metrics (both conventions, ROUGE), the runner, tables and plots."""

from .report import plot_quality_vs_ratio, replace_section
from .runner import (
    EvalResult,
    Prediction,
    breakdown_table,
    evaluate,
    markdown_table,
    markdown_tables,
)

__all__ = [
    "EvalResult",
    "Prediction",
    "breakdown_table",
    "evaluate",
    "markdown_table",
    "markdown_tables",
    "plot_quality_vs_ratio",
    "replace_section",
]
