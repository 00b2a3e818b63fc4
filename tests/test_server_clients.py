"""The real clients, unmodified, against a real `llamadoc serve` on loopback, on both engines (the
tiny libmtmd model and the tiny Llama 3.2 Vision): ollama-python, openai, `llm` with llm-ollama,
langchain-ollama and LiteLLM (ollama_chat/, ollama/, openai/). Each holds a three-turn
conversation about an image, streamed, and gets a structured answer that parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llamadoc.guard import GuardPolicy
from tests.conftest import make_image
from tests.mllama_helpers import convert_fixture, fixture_image
from tests.server_helpers import Served, data_uri, offline_home, serving

# Bounded answers: random weights would never end an unbounded string.
SCHEMA = {"type": "object", "required": ["paid", "total"],
          "properties": {"paid": {"type": "boolean"}, "total": {"type": "integer"}}}
QUESTIONS = ["What does the chart show?", "Which bar is the tallest?", "And the smallest?"]


class Server:
    def __init__(self, served: Served, model: str, image: Path, log: list[str]) -> None:
        self.served, self.model, self.image, self.log = served, model, image, log

    @property
    def url(self) -> str:
        return self.served.url

    def chats(self) -> list[str]:
        """The access lines of the chat requests so far."""
        return [line for line in self.log if line.startswith("POST /api/") or line.startswith("POST /v1/chat")]


@pytest.fixture(scope="module", params=["mtmd", "mllama"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, text_model: Path,
           mmproj: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(request.param)
    log: list[str] = []
    if request.param == "mtmd":
        image, options = make_image(tmp / "chart.png"), {"model": str(text_model), "mmproj": str(mmproj)}
    else:
        image = tmp / "chart.png"
        fixture_image("square").save(image)
        options = {"model": str(convert_fixture("tiny", tmp / "tiny-mllama.gguf", "Q8_0")), "ctx": 2048}
    with offline_home(tmp / "home"), serving(log, guard=GuardPolicy(mode="off"), max_tokens=96, **options) as s:
        yield Server(s, s.resident.name, image, log)  # the name it lists (a file's name, never its path)


def three_turns(ask: Any) -> list[str]:
    """Three questions, each sent with the whole history (the first with the image) by ``ask``."""
    answers: list[str] = []
    for i, q in enumerate(QUESTIONS):
        answers.append(ask(i, q, answers))
        assert answers[-1] is not None
    return answers


def test_ollama_python(server: Server) -> None:
    c = server.served.ollama()
    assert [m.model for m in c.list().models] == [server.model]
    history: list[dict[str, Any]] = []

    def ask(i: int, q: str, answers: list[str]) -> str:
        history.append({"role": "user", "content": q, **({"images": [server.image]} if i == 0 else {})})
        parts = list(c.chat(model=server.model, messages=history, stream=True, options={"num_predict": 8}))
        assert parts[-1].done and len(parts) > 2  # streamed as decoded
        text = "".join(p.message.content for p in parts)
        history.append({"role": "assistant", "content": text})
        return text

    three_turns(ask)
    r = c.chat(model=server.model, format=SCHEMA, options={"num_predict": 64},
               messages=[{"role": "user", "content": "Paid? Total?", "images": [server.image]}])
    assert isinstance(json.loads(r.message.content)["paid"], bool)


def test_openai_python(server: Server) -> None:
    from pydantic import BaseModel

    o = server.served.openai()
    assert o.models.retrieve(server.model).id == server.model
    history: list[dict[str, Any]] = []

    def ask(i: int, q: str, answers: list[str]) -> str:
        content: Any = q if i else [{"type": "text", "text": q},
                                    {"type": "image_url", "image_url": {"url": data_uri(server.image)}}]
        history.append({"role": "user", "content": content})
        chunks = list(o.chat.completions.create(model=server.model, messages=history, stream=True, max_tokens=8))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert len(chunks) > 3
        history.append({"role": "assistant", "content": text})
        return text

    three_turns(ask)

    class Invoice(BaseModel):
        paid: bool
        total: int

    parsed = o.chat.completions.parse(model=server.model, messages=[{"role": "user", "content": "The invoice."}],
                                      response_format=Invoice, max_tokens=64)
    assert isinstance(parsed.choices[0].message.parsed, Invoice)


def _llm(server: Server, tmp: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "OLLAMA_HOST": server.url, "LLM_USER_PATH": str(tmp)}
    out = subprocess.run([sys.executable, "-m", "llm", *args], env=env, input=stdin, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_llm_with_llm_ollama(server: Server, tmp_path: Path) -> None:
    model = f"ollama/{server.model}"
    assert model in _llm(server, tmp_path, "models")
    before = len(server.chats())
    _llm(server, tmp_path, "-m", model, "-a", str(server.image), "-o", "num_predict", "8", QUESTIONS[0])
    for q in QUESTIONS[1:]:  # `llm -c` continues the conversation: the history (and its image) go again
        _llm(server, tmp_path, "-c", "-o", "num_predict", "8", q)
    logged = json.loads(_llm(server, tmp_path, "logs", "-n", "3", "--json"))
    assert len({entry["conversation_id"] for entry in logged}) == 1 and len(logged) == 3
    chat = _llm(server, tmp_path, "chat", "-m", model, "-o", "num_predict", "8", stdin="Hello\nMore?\nWhy?\nquit\n")
    assert chat.count("> ") >= 3
    schema = json.dumps(SCHEMA)
    value = json.loads(_llm(server, tmp_path, "-m", model, "--schema", schema, "-o", "num_predict", "64", "Paid?"))
    assert isinstance(value["paid"], bool)
    assert len(server.chats()) - before == 3 + 3 + 1 and all(" 200 " in line for line in server.chats()[before:])


def test_langchain_ollama(server: Server) -> None:
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel

    llm = ChatOllama(model=server.model, base_url=server.url, num_predict=8, temperature=0)
    history: list[BaseMessage] = []

    def ask(i: int, q: str, answers: list[str]) -> str:
        content: Any = q if i else [{"type": "text", "text": q},
                                    {"type": "image_url", "image_url": data_uri(server.image)}]
        history.append(HumanMessage(content=content))
        chunks = list(llm.stream(history))
        assert len(chunks) > 2
        text = "".join(str(c.content) for c in chunks)
        history.append(AIMessage(content=text))
        return text

    three_turns(ask)

    class Invoice(BaseModel):
        paid: bool
        total: int

    structured = ChatOllama(model=server.model, base_url=server.url, num_predict=64, temperature=0)
    assert isinstance(structured.with_structured_output(Invoice, method="json_schema").invoke("Paid?"), Invoice)


@pytest.mark.parametrize("prefix", ["ollama_chat/", "ollama/", "openai/"])
def test_litellm(server: Server, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline
    import litellm

    base = f"{server.url}/v1" if prefix == "openai/" else server.url
    history: list[dict[str, Any]] = []

    def ask(i: int, q: str, answers: list[str]) -> str:
        content: Any = q if i else [{"type": "text", "text": q},
                                    {"type": "image_url", "image_url": {"url": data_uri(server.image)}}]
        history.append({"role": "user", "content": content})
        chunks = list(litellm.completion(model=prefix + server.model, api_base=base, api_key="unused",
                                         messages=history, stream=True, max_tokens=8, temperature=0))
        assert len(chunks) > 2
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        history.append({"role": "assistant", "content": text})
        return text

    three_turns(ask)
    r = litellm.completion(model=prefix + server.model, api_base=base, api_key="unused", max_tokens=64,
                           messages=[{"role": "user", "content": "Paid?"}],
                           response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    assert isinstance(json.loads(r.choices[0].message.content)["paid"], bool)
