"""The ``ctxcompress`` command line: compress documents, answer questions, run the demo.

    ctxcompress compress report.txt -o report.ctx --ratio 4
    ctxcompress generate --context report.ctx -q "Who wrote the report?" -q "When?"
    ctxcompress demo

Errors on bad input (every :class:`~ctxcompress.errors.CtxCompressError`, plus missing or
unreadable files) print one red line on stderr and exit with code 2, like a usage error;
anything else is a bug and keeps its traceback.
"""

# The command modules register their commands on import, in --help order.
# isort: off
from . import answering, evaluation, training, serving  # noqa: F401

# isort: on
from ._common import EXIT_USER_ERROR, app, build_fresh, unescape

__all__ = ["EXIT_USER_ERROR", "app", "build_fresh", "unescape"]
