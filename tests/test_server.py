"""llamadoc serve as a real server on loopback (tiny libmtmd model + mmproj, tiny guard), driven by the
real ollama and openai clients: shapes, streaming, schemas, bad input, the guard, keys, limits."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from llamadoc.engines.base import GenerationRequest, GenerationResponse
from llamadoc.errors import UsageError
from llamadoc.guard import GuardPolicy
from llamadoc.server.batcher import Batcher, Busy, Ticket
from llamadoc.server.options import ServeOptions, parse_duration
from tests.conftest import make_image, make_pdf
from tests.fakes import ScriptedGuard
from tests.server_helpers import Served, b64, data_uri, offline_home, serving
from tests.test_raster import bomb_gif

SCHEMA = {"type": "object", "required": ["paid", "total"],
          "properties": {"paid": {"type": "boolean"}, "total": {"type": "integer"}}}


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "chart.png")


@pytest.fixture(scope="module")
def served(text_model: Path, mmproj: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with offline_home(tmp_path_factory.mktemp("home")), serving(
            model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), max_tokens=48) as s:
        yield s


def test_ollama_chat_about_an_image(served: Served, text_model: Path, chart: Path) -> None:
    c = served.ollama()
    r = c.chat(model=str(text_model), messages=[{"role": "user", "content": "What is shown?", "images": [chart]}],
               options={"num_predict": 6})
    assert r.done and r.done_reason == "length" and r.eval_count == 6
    assert r.prompt_eval_count > 16 and r.total_duration > 0  # the image's tokens are in the prompt
    parts = list(c.chat(model=str(text_model), stream=True, options={"num_predict": 6},
                        messages=[{"role": "user", "content": "What is shown?", "images": [chart]}]))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == r.message.content  # greedy: the same answer


def test_ollama_format_schema_gives_valid_json(served: Served, text_model: Path, chart: Path) -> None:
    c = served.ollama()
    r = c.chat(model=str(text_model), format=SCHEMA,
               messages=[{"role": "user", "content": "The invoice as JSON.", "images": [chart]}])
    value = json.loads(r.message.content)
    assert isinstance(value["paid"], bool) and isinstance(value["total"], int)
    g = c.generate(model=str(text_model), prompt="JSON please", images=[chart], format=SCHEMA)
    assert isinstance(json.loads(g.response)["paid"], bool)
    streamed = "".join(p.response for p in c.generate(model=str(text_model), prompt="JSON please", images=[chart],
                                                       format=SCHEMA, stream=True))
    assert streamed == g.response


def test_openai_chat_with_image_url_and_json_schema(served: Served, text_model: Path, chart: Path) -> None:
    o = served.openai()
    content = [{"type": "text", "text": "Extract the invoice."}, {"type": "image_url", "image_url": {"url": data_uri(chart)}}]
    r = o.chat.completions.create(model=str(text_model), messages=[{"role": "user", "content": content}],
                                  response_format={"type": "json_schema",
                                                   "json_schema": {"name": "invoice", "schema": SCHEMA}})
    value = json.loads(r.choices[0].message.content or "")
    assert isinstance(value["total"], int) and r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(o.chat.completions.create(model=str(text_model), messages=[{"role": "user", "content": content}],
                                            stream=True, stream_options={"include_usage": True},
                                            response_format={"type": "json_schema",
                                                             "json_schema": {"name": "invoice", "schema": SCHEMA}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [m.id for m in o.models.list()] == [text_model.name]  # a name, not this machine's path


def test_model_routes(served: Served, text_model: Path) -> None:
    c = served.ollama()
    [listed] = c.list().models
    assert listed.model == text_model.name and listed.details is not None  # a name, never the path
    assert listed.details.format == "gguf" and httpx.get(f"{served.url}/api/tags").json()["models"][0]["name"] == \
        text_model.name
    assert listed.digest == served.resident.models.sha256()
    shown = c.show(str(text_model))
    assert shown.capabilities == ["completion", "vision"] and shown.modelinfo["general.architecture"] == "llama"
    assert [m.model for m in c.ps().models] == [text_model.name]  # loaded by the tests before
    assert str(text_model.parent) not in json.dumps(httpx.post(f"{served.url}/api/show", json={"model": text_model.name}
                                                               ).json())
    assert httpx.get(f"{served.url}/api/version").json()["version"]


def test_unknown_model_is_404(served: Served, chart: Path) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        served.ollama().chat(model="llama3.2-vision:11b", messages=[{"role": "user", "content": "?"}])
    assert err.value.status_code == 404 and "not found" in err.value.error
    with pytest.raises(openai.NotFoundError) as oerr:
        served.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "?"}])
    assert oerr.value.code == "model_not_found"


@pytest.mark.parametrize(("images", "message"), [
    ([base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()], "is a damaged PNG image"),
    ([base64.b64encode(b"hello, world").decode()], "not an image"),
    (["not base64!"], "not valid base64"),
])
def test_bad_images_are_400(served: Served, text_model: Path, images: list[str], message: str) -> None:
    r = httpx.post(f"{served.url}/api/chat", json={"model": str(text_model), "stream": False,
                                                    "messages": [{"role": "user", "content": "?", "images": images}]})
    assert r.status_code == 400 and message in r.json()["error"] and "\n" not in r.json()["error"]


def test_an_image_bomb_is_400_where_images_come_in(served: Served, text_model: Path, tmp_path: Path) -> None:
    """Chat messages and the engine route of `--server` clients refuse it with the CLI's words."""
    bomb = b64(bomb_gif(tmp_path / "bomb.gif", (65535, 65535), [(0, 0)]))
    chat = httpx.post(f"{served.url}/api/chat", json={"model": str(text_model), "stream": False,
                                                       "messages": [{"role": "user", "content": "?", "images": [bomb]}]})
    wire = httpx.post(f"{served.url}/v1/engine/generate", json={
        "prompt": "?", "images": [bomb], "system": None, "schema": None, "max_tokens": 4,
        "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 0}, "guard": "off"})
    assert chat.status_code == 400, chat.text
    assert "too large to decode safely" in chat.json()["error"] and "\n" not in chat.json()["error"]
    # The engine route takes only PNG, what the client sends: a GIF never reaches a decoder.
    assert wire.status_code == 400
    assert wire.json()["error"] == "the page image is not a PNG (the engine protocol carries PNG only)"


def test_a_pdf_where_an_image_is_wanted(served: Served, text_model: Path, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["Invoice 7"])
    with pytest.raises(ollama.ResponseError) as err:
        served.ollama().chat(model=str(text_model), messages=[{"role": "user", "content": "?", "images": [pdf.read_bytes()]}])
    assert err.value.status_code == 400 and "is a PDF" in err.value.error and "/v1/documents/ask" in err.value.error


def test_not_a_json_schema_is_400(served: Served, text_model: Path) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        served.ollama().chat(model=str(text_model), format={"type": 12}, messages=[{"role": "user", "content": "?"}])
    assert err.value.status_code == 400 and "not a valid JSON Schema" in err.value.error
    with pytest.raises(openai.BadRequestError) as oerr:
        served.openai().chat.completions.create(
            model=str(text_model), messages=[{"role": "user", "content": "?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}})
    assert "not a valid JSON Schema" in oerr.value.message


def test_image_urls_are_never_fetched(served: Served, text_model: Path) -> None:
    content = [{"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]
    with pytest.raises(openai.BadRequestError) as err:
        served.openai().chat.completions.create(model=str(text_model), messages=[{"role": "user", "content": content}])
    assert "only data: URIs" in err.value.message


def test_malformed_requests_are_400(served: Served, text_model: Path) -> None:
    assert httpx.post(f"{served.url}/api/chat", content=b"{oops", headers={"Content-Type": "application/json"}
                      ).status_code == 400
    r = httpx.post(f"{served.url}/api/chat", json={"model": str(text_model), "stream": False, "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]})
    assert r.status_code == 400 and "one user message" in r.json()["error"]
    r = httpx.post(f"{served.url}/api/chat", json={"model": str(text_model), "options": {"temperature": "hot"},
                                                    "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 400 and r.json() == {"error": "temperature must be a number"}
    assert httpx.get(f"{served.url}/nowhere").status_code == 404


def test_body_over_the_limit_is_413(text_model: Path, mmproj: Path, chart: Path) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), max_body_mb=1) as s:
        big = base64.b64encode(b"\0" * (1 << 20)).decode()
        r = httpx.post(f"{s.url}/api/chat", json={"model": str(text_model), "messages": [
            {"role": "user", "content": "?", "images": [big]}]})
        assert r.status_code == 413 and "limit of 1 MiB" in r.json()["error"]
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", content=iter([b"x" * 600_000] * 2)) as chunked:
            assert chunked.status_code == 413 and chunked.read()  # no Content-Length: counted as it comes
        assert s.ollama().chat(model=str(text_model), options={"num_predict": 2},
                               messages=[{"role": "user", "content": "?", "images": [chart]}]).done


def test_a_bug_is_500_with_one_line_and_a_logged_traceback(served: Served, text_model: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    def broken() -> None:
        raise RuntimeError("the header reader broke")

    monkeypatch.setattr(served.resident, "summary", broken)
    r = httpx.post(f"{served.url}/api/show", json={"model": str(text_model)})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error: RuntimeError: the header reader broke (see the server's log)"}
    assert "Traceback" in capfd.readouterr().err


def test_the_api_key_is_checked_on_every_route(text_model: Path, mmproj: Path) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), api_key="s3cret-s3cret-s3cret") as s:
        for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("GET", "/v1/models"),
                             ("POST", "/v1/documents/ask"), ("GET", "/v1/engine/info"), ("GET", "/")):
            assert httpx.request(method, s.url + path).status_code == 401, path
        assert httpx.get(f"{s.url}/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(ollama.ResponseError) as err:
            s.ollama().list()
        assert err.value.status_code == 401
        assert s.ollama(headers={"Authorization": "Bearer s3cret-s3cret-s3cret"}).list().models
        with pytest.raises(openai.AuthenticationError):
            s.openai().models.list()
        assert s.openai(api_key="s3cret-s3cret-s3cret").models.list().data


def test_other_addresses_need_a_key(run_cli: Any) -> None:
    with pytest.raises(UsageError, match="--api-key"):
        ServeOptions(host="0.0.0.0")
    assert ServeOptions(host="0.0.0.0", api_key="k" * 16).host == "0.0.0.0"
    result = run_cli("serve", "--host", "0.0.0.0")
    assert result.exit_code == 2 and "--api-key" in result.stderr and "Traceback" not in result.stderr


def test_durations_as_ollama_takes_them() -> None:
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration(30) == 30
    assert parse_duration("-1") is None and parse_duration("0") == 0
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_keep_alive_zero_unloads_after_the_request(text_model: Path, mmproj: Path, chart: Path) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off")) as s:
        c = s.ollama()
        c.chat(model=str(text_model), keep_alive=0, options={"num_predict": 2},
               messages=[{"role": "user", "content": "?", "images": [chart]}])
        deadline = time.monotonic() + 10
        while c.ps().models and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.ps().models == [] and s.resident.models.loaded is None
        loaded = c.chat(model=str(text_model), messages=[], keep_alive="5m")  # an empty chat loads it again
        assert loaded.done_reason == "load" and [m.model for m in c.ps().models] == [text_model.name]


def test_serve_without_the_extra_names_it(run_cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = run_cli("serve")
    assert result.exit_code == 2 and "pip install 'llamadoc[serve]'" in result.stderr


def test_help_does_not_import_the_web_stack() -> None:
    code = ("import sys\nfrom llamadoc.cli.app import main\ntry:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_pull_goes_through_the_registry(served: Served) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        served.ollama().pull("no-such-model")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as streamed:  # the tests are offline: the registry says so
        list(served.ollama().pull("llama-guard3:1b", stream=True))
    assert "offline" in streamed.value.error


# -- the guard ------------------------------------------------------------------------------

def test_the_real_guard_screens_and_withholds(text_model: Path, mmproj: Path, guard_model: Path, chart: Path) -> None:
    strict = GuardPolicy(model=str(guard_model), threshold=0.0)  # every verdict counts as unsafe
    with serving(model=str(text_model), mmproj=str(mmproj), guard=strict) as s:
        with pytest.raises(ollama.ResponseError) as err:
            s.ollama().chat(model=str(text_model), messages=[{"role": "user", "content": "?", "images": [chart]}])
        assert err.value.status_code == 400 and "withheld by the guard: the request was judged unsafe" in err.value.error
        with pytest.raises(openai.BadRequestError) as oerr:
            s.openai().chat.completions.create(model=str(text_model), messages=[{"role": "user", "content": "?"}])
        assert oerr.value.code == "content_policy_violation"
        assert s.resident.batcher.idle and s.resident.loaded_at is None  # the vision model was never needed


@pytest.fixture
def scripted_guard(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"rule": lambda convo: ("safe", 0.01)}
    monkeypatch.setattr("llamadoc.engines.load_guard_engine",
                        lambda engine, options, name: ScriptedGuard(lambda c: state["rule"](c), name))
    return state


def test_an_unsafe_answer_is_withheld_with_its_categories(text_model: Path, mmproj: Path, guard_model: Path,
                                                         chart: Path, scripted_guard: dict[str, Any]) -> None:
    scripted_guard["rule"] = lambda convo: ("unsafe\nS9", 0.97) if "Agent:" in convo else ("safe", 0.01)
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(model=str(guard_model))) as s:
        messages = [{"role": "user", "content": "What is shown?", "images": [chart]}]
        for stream in (False, True):
            with pytest.raises(ollama.ResponseError) as err:
                r = s.ollama().chat(model=str(text_model), messages=messages, stream=stream)
                list(r) if stream else None  # type: ignore[call-overload]
            assert err.value.status_code == 400
            assert err.value.error == "withheld by the guard: the answer was judged unsafe (S9 Indiscriminate Weapons)"
        content = [{"type": "text", "text": "?"}, {"type": "image_url", "image_url": {"url": data_uri(chart)}}]
        with pytest.raises(openai.BadRequestError) as oerr:
            list(s.openai().chat.completions.create(model=str(text_model), stream=True,
                                                    messages=[{"role": "user", "content": content}]))
        assert "S9 Indiscriminate Weapons" in oerr.value.message


def test_flag_answers_and_says_what_was_flagged(text_model: Path, mmproj: Path, guard_model: Path, chart: Path,
                                               scripted_guard: dict[str, Any]) -> None:
    scripted_guard["rule"] = lambda convo: ("unsafe\nS6", 0.8) if "Agent:" in convo else ("safe", 0.01)
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="flag", model=str(guard_model)),
                 max_tokens=4) as s:
        r = httpx.post(f"{s.url}/api/generate", json={"model": str(text_model), "prompt": "?", "stream": False,
                                                       "images": [b64(chart)]}).json()
        assert r["response"] and r["warnings"] == ["the image was not screened by a text-only guard",
                                                   "the answer was judged unsafe (S6 Specialized Advice)"]


# -- the queue ------------------------------------------------------------------------------

class HeldEngine:
    """An engine that answers only when the test lets it."""

    name, max_images, max_batch, supports_schema, gpu_layers, device = "held", 1, 1, True, 0, "CPU"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.started.set()
        self.release.wait(30)
        return GenerationResponse(text="done", prompt_tokens=1, completion_tokens=1)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


def test_a_full_queue_is_refused() -> None:
    engine = HeldEngine()
    batcher = Batcher(lambda: engine, max_queue=1)
    done: list[object] = []
    batcher.submit(Ticket(GenerationRequest("a"), on_done=done.append))
    assert engine.started.wait(10)
    batcher.submit(Ticket(GenerationRequest("b"), on_done=done.append))  # waits
    with pytest.raises(Busy):
        batcher.submit(Ticket(GenerationRequest("c")))
    engine.release.set()
    deadline = time.monotonic() + 10
    while len(done) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [d.text for d in done] == ["done", "done"]  # type: ignore[attr-defined]
    batcher.release()


def test_the_server_answers_503_with_retry_after(text_model: Path, mmproj: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    engine = HeldEngine()
    monkeypatch.setattr("llamadoc.engines.load_vision_engine", lambda kind, options, pixels: engine)
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), max_queue=1) as s:
        body = {"model": str(text_model), "stream": False, "messages": [{"role": "user", "content": "?"}]}
        first = threading.Thread(target=httpx.post, args=(f"{s.url}/api/chat",), kwargs={"json": body, "timeout": 30})
        second = threading.Thread(target=httpx.post, args=(f"{s.url}/api/chat",), kwargs={"json": body, "timeout": 30})
        first.start()
        assert engine.started.wait(10)
        second.start()
        deadline = time.monotonic() + 10
        while not s.resident.batcher._waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.resident.batcher._waiting, "the second request never reached the queue"
        r = httpx.post(f"{s.url}/api/chat", json=body)
        assert r.status_code == 503 and r.headers["Retry-After"] and "busy" in r.json()["error"]
        engine.release.set()
        first.join(10)
        second.join(10)


# -- the document routes ----------------------------------------------------------------------

def test_documents_route_answers_with_the_result_document(served: Served, tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "report.pdf", ["Annual report 2025", "Appendix"])
    r = httpx.post(f"{served.url}/v1/documents/ask", data={"question": "What year?", "max_tokens": "4", "dpi": "30"},
                   files={"file": ("report.pdf", pdf.read_bytes(), "application/pdf")}, timeout=60)
    assert r.status_code == 200 and r.headers["X-Llamadoc-Exit-Code"] == "0"
    doc = r.json()
    assert doc["schema_version"] and doc["source"] == "report.pdf" and doc["task"] == "ask"
    assert doc["page_count"] == 2 and doc["model"]["engine"] == "mtmd" and doc["options"]["guard"] == "off"
    schema = json.dumps({"type": "object", "required": ["paid"], "properties": {"paid": {"type": "boolean"}}})
    e = httpx.post(f"{served.url}/v1/documents/extract", data={"schema": schema, "format": "jsonl", "dpi": "30"},
                   files=[("file", ("a.pdf", pdf.read_bytes())), ("file", ("b.txt", b"not a document"))], timeout=60)
    lines = [json.loads(x) for x in e.text.splitlines()]
    assert [d["source"] for d in lines] == ["a.pdf", "b.txt"] and isinstance(lines[0]["fields"]["paid"], bool)
    assert lines[1]["status"] == "failed" and e.headers["X-Llamadoc-Exit-Code"] == "1"  # as the CLI would exit
    bad = httpx.post(f"{served.url}/v1/documents/extract", data={"schema": '{"type": "objekt"}'},
                     files={"file": ("a.pdf", pdf.read_bytes())})
    assert bad.status_code == 400 and "not a valid JSON Schema" in bad.json()["error"]
    assert httpx.post(f"{served.url}/v1/documents/summarise", files={"file": ("a.pdf", b"x")}).status_code == 404
