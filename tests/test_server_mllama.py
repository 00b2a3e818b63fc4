"""llamadoc serve on the mllama engine (the tiny converted Llama 3.2 Vision): the real clients, eight
concurrent clients decoded as one batch, a client that goes away mid-stream, the vision guard."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from llamadoc.guard import GuardPolicy
from llamadoc.server.batcher import Batcher
from tests.mllama_helpers import convert_fixture, fixture_image
from tests.server_helpers import Served, b64, data_uri, offline_home, serving

SCHEMA = {"type": "object", "required": ["paid"], "properties": {"paid": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def mllama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fixture("tiny", tmp_path_factory.mktemp("mllama") / "tiny-mllama.gguf", "Q8_0")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "chart.png"
    fixture_image("square").save(path)
    return path


@pytest.fixture(scope="module")
def served(mllama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with offline_home(tmp_path_factory.mktemp("home")), serving(
            model=str(mllama), guard=GuardPolicy(mode="off"), max_tokens=400, ctx=1024) as s:
        yield s


def test_ollama_and_openai_on_llama_vision(served: Served, mllama: Path, page: Path) -> None:
    c = served.ollama()
    ask = [{"role": "user", "content": "Which bar is tallest?", "images": [page]}]
    r = c.chat(model=str(mllama), messages=ask, options={"num_predict": 12})
    assert r.eval_count == 12 and r.prompt_eval_duration and r.eval_duration
    streamed = list(c.chat(model=str(mllama), messages=ask, options={"num_predict": 12}, stream=True))
    assert len(streamed) > 2 and "".join(p.message.content for p in streamed) == r.message.content
    fields = c.chat(model=str(mllama), messages=ask, format=SCHEMA, options={"num_predict": 40})
    assert isinstance(json.loads(fields.message.content)["paid"], bool)
    content = [{"type": "text", "text": "Paid?"}, {"type": "image_url", "image_url": {"url": data_uri(page)}}]
    o = served.openai().chat.completions.create(
        model=str(mllama), messages=[{"role": "user", "content": content}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    assert isinstance(json.loads(o.choices[0].message.content or "")["paid"], bool)


def test_eight_clients_are_decoded_as_one_batch(served: Served, mllama: Path, page: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Hold the engine until all eight requests wait, so the test does not depend on timing.
    gate, taken = threading.Event(), Batcher._next

    def held(self: Batcher, free: int, busy: bool) -> Any:
        gate.wait(30)
        return taken(self, free, busy)

    monkeypatch.setattr(Batcher, "_next", held)
    served.resident.batcher.release()  # its next thread waits at the gate
    answers: list[Any] = [None] * 8

    def client(i: int) -> None:
        answers[i] = served.ollama().chat(model=str(mllama), options={"num_predict": 10},
                                          messages=[{"role": "user", "content": f"Question {i}?", "images": [page]}])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(served.resident.batcher._waiting) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(served.resident.batcher._waiting) == 8, "the clients never all waited at the gate"
    gate.set()
    for t in threads:
        t.join(60)
    assert all(a is not None and a.done for a in answers)
    steps = served.batch_sizes
    assert steps[0] == 8 and max(steps) == 8  # every client in the same decoding steps


def test_a_client_gone_mid_stream_frees_its_sequence(served: Served, mllama: Path, page: Path) -> None:
    body = {"model": str(mllama), "messages": [{"role": "user", "content": "Describe it all.", "images": [b64(page)]}],
            "options": {"num_predict": 400}, "stream": True}
    whole = httpx.post(f"{served.url}/api/chat", json={**body, "stream": False}, timeout=120).json()
    assert whole["eval_count"] > 300  # left alone, this answer runs long
    before = len(served.batch_sizes)
    with httpx.stream("POST", f"{served.url}/api/chat", json=body, timeout=60) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["done"] is False
    deadline = time.monotonic() + 20
    while not served.resident.batcher.idle and time.monotonic() < deadline:
        time.sleep(0.02)
    scheduler = served.resident.batcher.scheduler
    assert served.resident.batcher.idle and scheduler is not None and not scheduler.busy
    assert len(served.batch_sizes) - before < whole["eval_count"] - 50  # dropped long before its end


def test_the_vision_guard_sees_the_image(mllama: Path, page: Path, tmp_path: Path) -> None:
    strict = GuardPolicy(model=str(mllama), threshold=0.0)  # the tiny model as Llama Guard 3 Vision; all unsafe
    with serving(model=str(mllama), guard=strict, max_tokens=8) as s:
        with pytest.raises(ollama.ResponseError) as err:
            s.ollama().chat(model=str(mllama), messages=[{"role": "user", "content": "?", "images": [page]}])
        assert err.value.status_code == 400 and "the request was judged unsafe" in err.value.error
        guard = s.resident.guard
        assert guard is not None and guard.engine.sees_images
