"""Generation on the tiny fixture: batched decode equals one-at-a-time, grammars, the image cache, limits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.mllama_helpers import convert_fixture, fixture_image

pytest.importorskip("llama_cpp")
jsonschema = pytest.importorskip("jsonschema")

from llamadoc.engines.llamacpp import schema_grammar  # noqa: E402
from llamadoc.engines.mllama.model import BatchItem, MllamaModel  # noqa: E402
from llamadoc.errors import PageError  # noqa: E402

SCHEMA = {"type": "object", "required": ["paid", "currency"],
          "properties": {"paid": {"type": "boolean"}, "currency": {"enum": ["EUR", "USD", "GBP"]}}}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MllamaModel]:
    path = convert_fixture("tiny", tmp_path_factory.mktemp("gen") / "tiny.gguf", "F32")
    m = MllamaModel.load(path, threads=1, kv_f16=False, image_cache=2)
    yield m
    m.close()


def prompts(model: MllamaModel) -> list[tuple[object, list[int]]]:
    tok = model.tokenizer
    return [(fixture_image("square"), tok.chat("Describe the chart.", image=True)),
            (fixture_image("wide"), tok.chat("What is the date?", image=True)),
            (None, tok.chat("What is the amount due?")),
            (fixture_image("square"), tok.chat("Name the vendor.", image=True)),
            (fixture_image("tall"), tok.chat("Answer in JSON.", image=True))]


def test_batched_greedy_equals_one_at_a_time(model: MllamaModel) -> None:
    cases = prompts(model)
    single = [model.generate(img, ids, max_tokens=16, stop=()).tokens for img, ids in cases]  # type: ignore[arg-type]
    batch = model.generate_batch([BatchItem(img, ids, max_tokens=16) for img, ids in cases],  # type: ignore[arg-type]
                                 stop=())
    assert [c.tokens for c in batch] == single
    assert all(len(t) == 16 for t in single)


def test_batch_members_stop_on_their_own(model: MllamaModel) -> None:
    cases = prompts(model)[:3]
    budgets = [3, 9, 5]
    items = [BatchItem(img, ids, max_tokens=n) for (img, ids), n in zip(cases, budgets, strict=True)]  # type: ignore[arg-type]
    batch = model.generate_batch(items, stop=())
    assert [len(c.tokens) for c in batch] == budgets
    assert [c.finish_reason for c in batch] == ["length"] * 3


def test_schema_grammar_gives_valid_json(model: MllamaModel) -> None:
    grammar = schema_grammar(SCHEMA)
    for img, ids in prompts(model)[:3]:
        out = model.generate(img, ids, max_tokens=60, grammar=grammar)  # type: ignore[arg-type]
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMA)


def test_each_image_is_encoded_once(model: MllamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = model._vision.encode
    monkeypatch.setattr(model._vision, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    page = fixture_image("taller")
    tok = model.tokenizer
    first = model.generate(page, tok.chat("What is the total?", image=True), max_tokens=4, stop=())
    again = model.generate(page, tok.chat("What is the total?", image=True), max_tokens=4, stop=())
    other = model.generate(page, tok.chat("Who is the vendor?", image=True), max_tokens=4, stop=())
    assert len(calls) == 1
    assert first.tokens == again.tokens and len(other.tokens) == 4


def test_sampling_is_seeded(model: MllamaModel) -> None:
    img, ids = prompts(model)[0]

    def run(seed: int) -> list[int]:
        return model.generate(img, ids, max_tokens=12, temperature=1.5, top_p=0.95, seed=seed,  # type: ignore[arg-type]
                              stop=()).tokens

    assert run(7) == run(7)
    assert len({tuple(run(s)) for s in range(4)}) > 1


def test_context_limits(model: MllamaModel) -> None:
    ids = model.tokenizer.chat("word " * 2000)
    with pytest.raises(PageError, match="context holds"):
        model.generate(None, ids, max_tokens=4)
    short = model.tokenizer.chat("hi")
    out = model.generate(None, short, max_tokens=10_000, stop=())
    assert out.finish_reason == "length" and len(short) + len(out.tokens) == model.n_ctx + 1


def test_kept_logits_are_the_first_steps(model: MllamaModel) -> None:
    img, ids = prompts(model)[1]
    out = model.generate(img, ids, max_tokens=5, keep_logits=3, stop=())  # type: ignore[arg-type]
    assert len(out.logits) == 3 and [int(r.argmax()) for r in out.logits] == out.tokens[:3]
