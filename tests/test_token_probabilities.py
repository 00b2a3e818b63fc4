"""Both engines say how sure the model was of each token it wrote, and extract turns that into a
probability per value: real engines on tiny generated models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from llamadoc.engines.base import GenerationRequest, LoadOptions
from llamadoc.evidence.confidence import value_probabilities
from tests.mllama_helpers import convert_fixture, fixture_image

SCHEMA = {"type": "object", "required": ["paid", "currency"],
          "properties": {"paid": {"type": "boolean"}, "currency": {"enum": ["EUR", "USD", "GBP"]}}}


@pytest.fixture(scope="module")
def mllama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from llamadoc.engines.mllama.engine import MllamaEngine

    path = convert_fixture("tiny", tmp_path_factory.mktemp("probs") / "tiny.gguf", "F32")
    engine = MllamaEngine(LoadOptions(model_path=str(path), threads=1, max_tokens=64))
    yield engine
    engine.close()


def log_softmax(row: np.ndarray) -> np.ndarray:
    z = row.astype(np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def test_mllama_records_each_picked_tokens_probability(mllama: object) -> None:
    model = mllama.model  # type: ignore[attr-defined]
    ids = model.tokenizer.chat("What is the date?", image=True)
    out = model.generate(fixture_image("wide"), ids, max_tokens=6, keep_logits=6, stop=())
    assert len(out.logprobs) == len(out.tokens) == 6
    for row, token, lp in zip(out.logits, out.tokens, out.logprobs, strict=True):
        assert lp == pytest.approx(log_softmax(row)[token], abs=1e-4)  # the model's own, over the whole vocabulary


def test_mllama_response_pieces_spell_the_text_and_give_value_probabilities(mllama: object) -> None:
    engine = mllama
    response = engine.generate(GenerationRequest(  # type: ignore[attr-defined]
        prompt="Answer in JSON.", images=(fixture_image("square"),), schema=SCHEMA, max_tokens=64))
    assert b"".join(p for p, _ in response.logprobs).decode() == response.text
    assert all(lp <= 0 for _, lp in response.logprobs)
    chances = value_probabilities(response.logprobs)
    assert set(chances) == {"paid", "currency"} and all(0 < p <= 1 for p in chances.values())


def test_mtmd_records_token_probabilities_without_logits_all(text_model: Path, mmproj: Path) -> None:
    from llamadoc.engines.mtmd import MtmdEngine

    engine = MtmdEngine(LoadOptions(model_path=str(text_model), mmproj_path=str(mmproj), threads=1), 100_000)
    try:
        response = engine.generate(GenerationRequest(
            prompt="Answer in JSON.", images=(Image.new("RGB", (64, 64), (200, 30, 30)),), schema=SCHEMA,
            max_tokens=64))
        assert response.finish_reason == "stop"
        assert b"".join(p for p, _ in response.logprobs).decode() == response.text
        assert len(response.logprobs) >= response.completion_tokens - 1  # the end token writes no text
        assert all(lp <= 0 and math.isfinite(lp) for _, lp in response.logprobs)
        chances = value_probabilities(response.logprobs)
        assert set(chances) == {"paid", "currency"}
        # Random weights spread their probability over the whole vocabulary: a value is far from sure.
        assert all(p < 0.5 for p in chances.values())
        cut = engine.generate(GenerationRequest(prompt="Say something.", max_tokens=5))
        assert cut.finish_reason == "length"
        assert b"".join(p for p, _ in cut.logprobs).decode() == cut.text  # the last token too, never fed back
    finally:
        engine.close()


def test_extract_through_the_cli_gives_every_value_its_evidence_confidence_and_checks(
        run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    """The real libmtmd engine end to end: random weights answer nonsense, and the result says so
    value by value (no place on the page, a low confidence) and puts the document up for review."""
    import json

    from tests.printed import PrintedInvoice

    pdf = PrintedInvoice().pdf(tmp_path / "invoice.pdf")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA | {"properties": SCHEMA["properties"] | {"issue_date": {"type": "string",
                                                                                                "maxLength": 12}}}))
    args = ["extract", str(pdf), "--schema", str(schema), *model_args, "--format", "json", "--dpi", "30",
            "--max-tokens", "64"]
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 3 and [v["path"] for v in doc["values"]] == list(doc["fields"])
    for value in doc["values"]:
        assert 0 <= value["confidence"] <= 1 and value["model_p"] is not None
        assert value["evidence"]["page"] is not None or value["evidence"]["why_not"]
    currency = next(v for v in doc["values"] if v["path"] == "currency")
    assert [c["name"] for c in currency["checks"]][-1] == "currency:currency"
    assert doc["needs_review"] and doc["review"]
    assert run_cli(*args, "--fail-on", "needs-review").exit_code == 1
    assert run_cli(*args, "--review-below", "2").exit_code == 2  # not between 0 and 1
