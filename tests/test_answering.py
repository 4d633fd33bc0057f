"""``Compressor.plan`` / ``answer`` (methods/answering.py): one place that tokenizes questions
and checks every limit before decoding, and decoding that returns Generation objects."""

from __future__ import annotations

import pytest

import ctxcompress as cc
from ctxcompress.generation import Generation
from ctxcompress.methods import AnswerPlan
from ctxcompress.serving.batcher import Answer
from ctxcompress.testing import tiny_model
from tests.conftest import TEXT, randomize_trainables

QUESTIONS = ["Where did the committee meet?", "When?", "What did anchors collect?"]


@pytest.fixture(params=["sac", "icae", "prompt_tuned"])
def comp(request):
    options = {"prompt_tuned": {"context": "full", "prompt_vectors": 4}}.get(request.param, {})
    c = cc.build_compressor(request.param, tiny_model(), ratio=4, **options)
    randomize_trainables(c)
    return c


def test_answer_of_a_plan_is_generate_with_token_ids_and_finish_reasons(comp):
    ctx = comp.compress(TEXT)
    plan = comp.plan(ctx, QUESTIONS, max_new_tokens=6)
    assert len(plan) == 3 and plan.max_new_tokens == 6
    assert [list(ids) for ids in plan.prompt_ids] == [comp.question_ids(q) for q in QUESTIONS]
    generations = comp.answer(plan, batch_size=2)
    assert all(isinstance(g, Generation) for g in generations)
    assert [g.text for g in generations] == comp.generate(ctx, QUESTIONS, max_new_tokens=6)
    for g in generations:
        assert g.finish_reason in ("eos", "stop", "length")
        assert (g.finish_reason == "length") == (len(g.token_ids) == 6)
        assert comp.decode(g.token_ids).strip() == g.text


def test_plans_join_and_split_by_rows(comp):
    ctx = comp.compress(TEXT)
    plan = comp.plan(ctx, QUESTIONS, max_new_tokens=4)
    parts = [plan.rows([i]) for i in range(len(plan))]
    assert AnswerPlan.join(parts) == plan
    joined = [g.text for g in comp.answer(AnswerPlan.join(parts[::-1]))]
    assert joined == [g.text for g in comp.answer(plan)][::-1]
    with pytest.raises(cc.InvalidInputError, match="share max_new_tokens"):
        AnswerPlan.join([plan, comp.plan(ctx, "q?", max_new_tokens=5)])


def test_plan_refuses_what_cannot_be_answered_naming_the_question(comp):
    ctx = comp.compress(TEXT)
    with pytest.raises(cc.PromptTooLongError, match="question 1 has"):
        comp.plan(ctx, ["short?", "long " * 50], 4, max_question_tokens=20)
    pair = ["When?", "Where and when, and why?"]  # question 1 is the longer
    room = comp.max_positions - comp.positions_needed(ctx, len(comp.question_ids(pair[1])), 0)
    assert isinstance(comp.plan(ctx, pair, room), AnswerPlan)
    with pytest.raises(cc.ContextTooLongError, match=r"question 1 \(.*exceed the model's"):
        comp.plan(ctx, pair, room + 1)
    with pytest.raises(cc.InvalidInputError, match="question is empty"):
        comp.plan(ctx, ["ok?", "   "], 4)
    with pytest.raises(cc.InvalidInputError, match="max_new_tokens"):
        comp.plan(ctx, "ok?", True)
    with pytest.raises(cc.InvalidInputError, match="2 contexts but 3 questions"):
        comp.plan([ctx, ctx], QUESTIONS, 4)


def test_plan_refuses_a_context_of_another_compressor():
    one = cc.build_compressor("sac", tiny_model(), ratio=4)
    other = cc.build_compressor("sac", tiny_model(), ratio=4)
    randomize_trainables(other)
    with pytest.raises(cc.ContextMismatchError):
        one.plan(other.compress(TEXT), "q?", 4)


@pytest.mark.parametrize(
    ("reason", "service_reason"), [("eos", "stop"), ("stop", "stop"), ("length", "length")]
)
def test_the_service_reports_openai_finish_reasons(reason, service_reason):
    answer = Answer.of(Generation("Paris", [5, 6], reason))
    assert (answer.text, answer.tokens, answer.finish_reason) == ("Paris", 2, service_reason)
