"""Continuous batching on the tiny fixture: sequences that join at any step decode as they would alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mllama_helpers import convert_fixture, fixture_image

pytest.importorskip("llama_cpp")

from llamadoc.engines.llamacpp import schema_grammar  # noqa: E402
from llamadoc.engines.mllama.model import BatchItem, MllamaModel  # noqa: E402
from llamadoc.engines.mllama.scheduler import Scheduler  # noqa: E402
from llamadoc.errors import PageError  # noqa: E402


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fixture("tiny", tmp_path_factory.mktemp("sched") / "tiny.gguf", "F32")


def load(path: Path) -> MllamaModel:
    return MllamaModel.load(path, threads=1, kv_f16=False, image_cache=2, n_ctx=512)


@pytest.fixture(scope="module")
def model(path: Path) -> Iterator[MllamaModel]:
    m = load(path)
    yield m
    m.close()


def items(model: MllamaModel, max_tokens: int = 12) -> list[BatchItem]:
    tok = model.tokenizer
    return [BatchItem(fixture_image("square"), tok.chat("Describe the chart.", image=True), max_tokens=max_tokens),
            BatchItem(None, tok.chat("What is the amount due?"), max_tokens=max_tokens),
            BatchItem(fixture_image("wide"), tok.chat("What is the date?", image=True), max_tokens=max_tokens),
            BatchItem(fixture_image("square"), tok.chat("Name the vendor.", image=True), max_tokens=max_tokens)]


def alone(model: MllamaModel, item: BatchItem) -> list[int]:
    return model.generate(item.image, item.prompt, max_tokens=item.max_tokens, stop=()).tokens


def drain(s: Scheduler) -> None:
    while s.busy:
        s.step()


def test_sequences_joining_at_any_step_decode_as_alone(path: Path, model: MllamaModel,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cases = items(model)
    fresh = load(path)  # its image cache is empty, so the scheduler's encodes can be counted
    try:
        for m in (model, fresh):
            monkeypatch.setattr(m.tokenizer, "stop", set())  # run every sequence to its budget
        expected = [alone(model, it) for it in cases]
        s = Scheduler(fresh, 4)
        texts = ["" for _ in cases]

        def collect(i: int):  # type: ignore[no-untyped-def]
            return lambda t: texts.__setitem__(i, texts[i] + t)

        running = [s.add(cases[0], collect(0))]
        encoded = [s.encoded]
        for _ in range(3):
            s.step()
        for i in (1, 2):
            running.append(s.add(cases[i], collect(i)))
            encoded.append(s.encoded)
        s.step()
        running.append(s.add(cases[3], collect(3)))
        encoded.append(s.encoded)
        drain(s)
        assert [r.tokens for r in running] == expected
        assert [r.finish for r in running] == ["length"] * 4
        # One sequence for three steps, then three, then four decoding together, then fewer as they end.
        assert s.batch_sizes[:5] == [1, 1, 1, 3, 4]
        assert max(s.batch_sizes) == 4 and s.batch_sizes[-1] < 4
        assert texts == [fresh.tokenizer.decode(r.tokens) for r in running]
        # "square" and "wide" are encoded as they come; the second question about "square",
        # added while the first still runs, reads the image cache.
        assert encoded == [1, 1, 2, 2]
    finally:
        fresh.close()


def test_a_freed_row_is_taken_by_the_next_sequence(model: MllamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.tokenizer, "stop", set())
    short, long_, late = items(model, 3)[0], items(model, 10)[1], items(model, 6)[2]
    s = Scheduler(model, 2)
    a, b = s.add(short), s.add(long_)
    for _ in range(2):
        s.step()
    assert a.finish == "length" and s.free == 1 and a.seq.row == 0
    c = s.add(late)
    assert c.seq.row == 0
    drain(s)
    assert b.tokens == alone(model, long_) and c.tokens == alone(model, late)


def test_cancel_frees_the_row(model: MllamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.tokenizer, "stop", set())
    s = Scheduler(model, 2)
    r = s.add(items(model, 50)[1])
    s.step()
    s.cancel(r)
    assert r.finish == "cancelled" and not s.busy and len(r.tokens) == 2
    assert s.step() == []


def test_grammar_and_errors_stay_with_their_sequence(model: MllamaModel) -> None:
    schema = {"type": "object", "required": ["paid"], "properties": {"paid": {"type": "boolean"}}}
    tok = model.tokenizer
    s = Scheduler(model, 2)
    ok = s.add(BatchItem(None, tok.chat("Paid?"), grammar=schema_grammar(schema), max_tokens=40))
    with pytest.raises(PageError):
        s.add(BatchItem(None, [tok.bos] * 600, max_tokens=4))  # longer than the context
    assert s.free == 1
    drain(s)
    assert isinstance(json.loads(model.tokenizer.decode(ok.tokens))["paid"], bool)


def test_a_conversation_turn_continues_in_its_rows_cache(model: MllamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next turn of a conversation prefills only its new tokens, and answers as a fresh prefill would."""
    monkeypatch.setattr(model.tokenizer, "stop", set())
    tok, page = model.tokenizer, fixture_image("square")
    s = Scheduler(model, 2)
    first = s.add(BatchItem(page, tok.dialog([("user", "Describe the chart.")], image_at=0), max_tokens=10))
    drain(s)
    said = tok.decode(first.tokens)
    follow_up = tok.dialog([("user", "Describe the chart."), ("assistant", said), ("user", "And the title?")],
                           image_at=0)
    other = BatchItem(None, tok.chat("Unrelated question, with no image."), max_tokens=4)
    s.add(other)  # takes the other free row: the kept turn stays
    second = s.add(BatchItem(page, follow_up, max_tokens=10))
    assert second.seq.row == first.seq.row and s.reused == second.timings_ms["prompt_reused"] > 20
    drain(s)
    assert second.tokens == alone(model, BatchItem(page, follow_up, max_tokens=10))
    fresh = Scheduler(model, 2)  # a page that differs is never read from a kept row
    third = fresh.add(BatchItem(fixture_image("wide"), follow_up, max_tokens=2))
    assert fresh.reused == 0 and third.timings_ms["prompt_reused"] == 0


def test_stop_texts_and_a_callback_that_says_stop(model: MllamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model.tokenizer, "stop", set())
    tok = model.tokenizer
    prompt = tok.chat("Describe the chart.", image=True)
    whole = alone(model, BatchItem(fixture_image("square"), prompt, max_tokens=30))
    text = tok.decode(whole)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    s = Scheduler(model, 2)
    seen: list[str] = []
    cut = s.add(BatchItem(fixture_image("square"), prompt, max_tokens=30, stop=(stop,)), seen.append)
    drain(s)
    assert cut.finish == "stop" and s.completion(cut).text == text[: text.index(stop)] == "".join(seen)
    steps: list[str] = []
    hung_up = s.add(BatchItem(fixture_image("square"), prompt, max_tokens=30), lambda t: steps.append(t) or len(steps) < 3)
    drain(s)
    assert hung_up.finish == "cancelled" and len(hung_up.tokens) == 3 and not s.busy
