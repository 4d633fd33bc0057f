"""Speed and memory benchmarks (``ctxcompress bench``)."""

from .speed import BenchSettings, markdown_report, run_speed_benchmark

__all__ = ["BenchSettings", "markdown_report", "run_speed_benchmark"]
