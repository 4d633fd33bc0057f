"""Evaluation: metrics (both conventions, ROUGE), the runner, tables and plots."""

from .report import plot_quality_vs_ratio
from .runner import EvalResult, Prediction, breakdown_table, evaluate, markdown_table

__all__ = [
    "EvalResult",
    "Prediction",
    "breakdown_table",
    "evaluate",
    "markdown_table",
    "plot_quality_vs_ratio",
]
