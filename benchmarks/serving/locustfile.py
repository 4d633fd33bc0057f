"""The locust users of ``benchmarks/serving/load.py`` (issue 21): people asking questions
against stored contexts, and now and then compressing a new document.

``load.py`` stores the documents first and passes their ids in ``CTXCOMPRESS_LOAD_IDS``
(comma-separated); ``CTXCOMPRESS_LOAD_MAX_NEW_TOKENS`` sets the answer length. A response
other than 200/201 is a failure (locust counts it).
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task
from texts import QUESTIONS  # beside this file (locust puts its folder on sys.path)

IDS = [i for i in os.environ.get("CTXCOMPRESS_LOAD_IDS", "").split(",") if i]
MAX_NEW_TOKENS = int(os.environ.get("CTXCOMPRESS_LOAD_MAX_NEW_TOKENS", "16"))
WORDS = ["paris", "report", "anchor", "chunk", "river", "code", "box", "attic", "seven", "blue"]


class ContextUser(HttpUser):
    """Asks a question about a random stored context (10 in 11 requests) or compresses a
    fresh document (1 in 11), waiting 0.5-1.5 s between requests like a person would not."""

    wait_time = between(0.5, 1.5)

    @task(10)
    def ask(self) -> None:
        cid = random.choice(IDS)
        body = {"question": random.choice(QUESTIONS), "max_new_tokens": MAX_NEW_TOKENS}
        self.client.post(f"/v1/contexts/{cid}/answers", json=body, name="answer")

    @task(1)
    def compress(self) -> None:
        text = " ".join(random.choices(WORDS, k=60)) + f" {random.random()}"
        self.client.post("/v1/contexts", json={"text": text}, name="compress")
