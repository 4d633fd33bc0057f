"""The document and questions the serving benchmarks send (``bench.py``, ``load.py`` and
the locust users): one copy, importable without ctxcompress (locust's process needs none)."""

DOCUMENT = (
    "The committee met in Paris in 1987 and wrote a report about context compression. "
    "It said that a trained compressor turns a long document into a few keys and values, "
    "and that a frozen language model reads them instead of the full text. "
)
QUESTIONS = [
    "Who wrote the report?",
    "Where did the committee meet?",
    "When was the report written?",
    "What does a compressor produce?",
    "What reads the compressed context?",
    "What was the report about?",
]
