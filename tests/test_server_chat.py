"""What chat clients need of llamadoc serve, on the tiny libmtmd model (and Llama 3.2 Vision where it
differs): conversations, tools, stop, keep_alive per request, num_ctx, streaming as decoded, a
client that hangs up, GET /v1/models/{id}, the access log and its refusals, and "stopped"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from llamadoc.engines.base import GenerationRequest, GenerationResponse
from llamadoc.engines.mtmd import MtmdEngine
from llamadoc.guard import GuardPolicy
from tests.conftest import make_image
from tests.mllama_helpers import convert_fixture, fixture_image
from tests.server_helpers import Served, b64, data_uri, offline_home, serving


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "chart.png")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image(tmp_path_factory.mktemp("img") / "other.png", size=(90, 120), color=(20, 90, 200))


@pytest.fixture(scope="module")
def log() -> list[str]:
    return []


@pytest.fixture(scope="module")
def served(text_model: Path, mmproj: Path, log: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with offline_home(tmp_path_factory.mktemp("home")), serving(
            log, model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), max_tokens=64) as s:
        yield s


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[GenerationResponse]:
    """What the libmtmd engine answered, with what it reused of an earlier prompt."""
    seen: list[GenerationResponse] = []
    stream = MtmdEngine.stream

    def recorded(self: MtmdEngine, request: GenerationRequest, on_text: Any) -> GenerationResponse:
        response = stream(self, request, on_text)
        seen.append(response)
        return response

    monkeypatch.setattr(MtmdEngine, "stream", recorded)
    return seen


def test_a_three_turn_conversation_about_an_image(served: Served, text_model: Path, chart: Path,
                                                  answers: list[GenerationResponse]) -> None:
    c = served.ollama()
    history: list[dict[str, Any]] = [{"role": "system", "content": "Answer briefly."},
                                     {"role": "user", "content": "What is shown?", "images": [chart]}]
    for question in ("Which bar is tallest?", "And the smallest?"):
        r = c.chat(model=str(text_model), messages=history, options={"num_predict": 8})
        assert r.done and r.message.content and not r.message.tool_calls
        history += [{"role": "assistant", "content": r.message.content}, {"role": "user", "content": question}]
    last = c.chat(model=str(text_model), messages=history, options={"num_predict": 8}, stream=True)
    assert "".join(p.message.content for p in last)
    first, second, third = answers
    # Each turn evaluates only what follows the previous one: the image is not encoded again.
    assert second.prompt_reused >= first.prompt_tokens
    assert third.prompt_reused >= second.prompt_tokens
    assert third.prompt_tokens > second.prompt_tokens > first.prompt_tokens


def test_images_in_a_conversation_on_libmtmd(served: Served, text_model: Path, chart: Path, other: Path,
                                             answers: list[GenerationResponse]) -> None:
    c = served.ollama()
    one = c.chat(model=str(text_model), messages=[{"role": "user", "content": "?", "images": [chart]}],
                 options={"num_predict": 2})
    both = c.chat(model=str(text_model), options={"num_predict": 2}, messages=[
        {"role": "user", "content": "?", "images": [chart]}, {"role": "assistant", "content": "A chart."},
        {"role": "user", "content": "And this one?", "images": [other]}])
    two_in_one = c.chat(model=str(text_model), messages=[{"role": "user", "content": "?", "images": [chart, other]}],
                        options={"num_predict": 2})
    assert two_in_one.prompt_eval_count == one.prompt_eval_count + 16  # each image is 16 tokens here
    assert both.prompt_eval_count > one.prompt_eval_count + 16


def test_generate_continues_with_its_context(served: Served, text_model: Path, chart: Path) -> None:
    c = served.ollama()
    first = c.generate(model=str(text_model), prompt="What is shown?", images=[chart], options={"num_predict": 6})
    assert first.context
    second = c.generate(model=str(text_model), prompt="And the title?", context=first.context,
                        options={"num_predict": 6})
    assert second.prompt_eval_count > first.prompt_eval_count + 6  # the first turn and its image are in it
    third = c.generate(model=str(text_model), prompt="Why?", context=second.context, options={"num_predict": 6},
                       stream=True)
    assert list(third)[-1].done
    with pytest.raises(ollama.ResponseError) as err:
        c.generate(model=str(text_model), prompt="?", context=[1, 2, 3])
    assert err.value.status_code == 400 and "context is not one this server gave" in err.value.error


def test_tools_are_accepted_and_the_model_answers_in_text(served: Served, text_model: Path) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "The weather",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    r = served.ollama().chat(model=str(text_model), tools=[tool], options={"num_predict": 4},
                             messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert r.message.content and not r.message.tool_calls
    o = served.openai()
    history = [{"role": "user", "content": "Weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    answer = o.chat.completions.create(model=str(text_model), messages=history, tools=[tool], tool_choice="auto",
                                       max_tokens=4)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    assert answer.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as err:
        o.chat.completions.create(model=str(text_model), messages=history, tools=[tool], tool_choice="required")
    assert "cannot call tools" in err.value.message
    assert served.ollama().show(str(text_model)).capabilities == ["completion", "vision"]  # no "tools"


def test_stop_on_both_apis(served: Served, text_model: Path, chart: Path) -> None:
    c, o = served.ollama(), served.openai()
    ask = [{"role": "user", "content": "Describe it.", "images": [chart]}]
    whole = c.chat(model=str(text_model), messages=ask, options={"num_predict": 40}).message.content
    stop = whole[len(whole) // 2: len(whole) // 2 + 2]
    cut = whole[: whole.index(stop)]
    r = c.chat(model=str(text_model), messages=ask, options={"num_predict": 40, "stop": [stop]})
    assert r.message.content == cut and r.done_reason == "stop"
    streamed = "".join(p.message.content for p in c.chat(model=str(text_model), messages=ask, stream=True,
                                                         options={"num_predict": 40, "stop": [stop]}))
    assert streamed == cut
    content = [{"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": data_uri(chart)}}]
    a = o.chat.completions.create(model=str(text_model), messages=[{"role": "user", "content": content}],
                                  max_tokens=40, stop=stop)
    assert a.choices[0].message.content == cut and a.choices[0].finish_reason == "stop"


def test_streaming_arrives_as_decoded(served: Served, text_model: Path, chart: Path) -> None:
    parts = list(served.ollama().chat(model=str(text_model), stream=True, options={"num_predict": 30},
                                      messages=[{"role": "user", "content": "Describe it.", "images": [chart]}]))
    assert len([p for p in parts if p.message.content]) > 5  # not one piece at the end
    chunks = list(served.openai().chat.completions.create(
        model=str(text_model), stream=True, max_tokens=30, messages=[{"role": "user", "content": "Describe it."}]))
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 5


def test_a_client_that_hangs_up_stops_its_generation(text_model: Path, mmproj: Path,
                                                     answers: list[GenerationResponse]) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), max_tokens=30000,
                 ctx=32768) as s:
        # The schema keeps the tiny model from ending early (a million integers; 1000 items is the
        # most one array may ask): 30,000 tokens take it some 20 s.
        row = {"type": "array", "items": {"type": "integer"}, "minItems": 1000}
        body = {"model": str(text_model), "messages": [{"role": "user", "content": "Go on."}],
                "options": {"num_predict": 30000}, "format": {"type": "array", "items": row, "minItems": 1000}}
        with httpx.stream("POST", f"{s.url}/api/chat", json=body, timeout=60) as r:
            assert json.loads(next(r.iter_lines()))["done"] is False
        deadline = time.monotonic() + 20
        while not answers and time.monotonic() < deadline:
            time.sleep(0.02)
        assert answers[0].finish_reason == "cancelled" and answers[0].completion_tokens < 25000
        # A request that does not stream is stopped too, once its client has gone.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{s.url}/api/chat", json={**body, "stream": False}, timeout=0.05)
        while len(answers) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert answers[1].finish_reason == "cancelled" and answers[1].completion_tokens < 25000


def test_keep_alive_is_per_request(served: Served, text_model: Path) -> None:
    c = served.ollama()
    c.chat(model=str(text_model), keep_alive=0, options={"num_predict": 1}, messages=[{"role": "user", "content": "?"}])
    deadline = time.monotonic() + 10
    while c.ps().models and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.ps().models == []  # that request's keep_alive: 0 unloaded the model after it
    c.chat(model=str(text_model), options={"num_predict": 1}, messages=[{"role": "user", "content": "?"}])
    time.sleep(1.5)  # the reaper looks every second
    [loaded] = c.ps().models  # the next request, giving none, has the server's --keep-alive
    assert loaded.expires_at is not None and loaded.expires_at.timestamp() > time.time() + 200
    for absurd in (1e18, "1e18", "9999999999h", True, "soon", [5]):
        r = httpx.post(f"{served.url}/api/generate", json={"model": str(text_model), "prompt": "?",
                                                            "keep_alive": absurd}, timeout=30)
        assert r.status_code == 400 and "keep_alive" in r.json()["error"], absurd
    assert httpx.post(f"{served.url}/api/generate", json={"model": str(text_model), "prompt": "",
                                                           "keep_alive": -1}).json()["done_reason"] == "load"


def test_num_ctx_loads_a_larger_context_up_to_the_trained_one(text_model: Path, mmproj: Path, chart: Path) -> None:
    with serving(model=str(text_model), mmproj=str(mmproj), guard=GuardPolicy(mode="off"), ctx=512, max_tokens=16) as s:
        c = s.ollama()
        long_text = "Please read this sentence again. " * 25  # about 800 tokens (one a character here)
        with pytest.raises(ollama.ResponseError) as err:
            c.chat(model=str(text_model), messages=[{"role": "user", "content": long_text}])
        assert err.value.status_code == 400 and "the prompt is" in err.value.error
        assert "context holds 512" in err.value.error and "num_ctx" in err.value.error
        assert "pixels" not in err.value.error
        r = c.chat(model=str(text_model), messages=[{"role": "user", "content": long_text}],
                   options={"num_ctx": 2048, "num_predict": 2})
        assert r.done and r.prompt_eval_count > 512
        assert c.ps().models[0].context_length == 2048
        with pytest.raises(ollama.ResponseError) as too_big:
            c.chat(model=str(text_model), messages=[{"role": "user", "content": "?"}], options={"num_ctx": 100_000})
        assert too_big.value.status_code == 400 and "trained context of 4096" in too_big.value.error


def test_models_retrieve(served: Served, text_model: Path) -> None:
    o = served.openai()
    assert o.models.retrieve(str(text_model)).id == str(text_model)
    with pytest.raises(openai.NotFoundError):
        o.models.retrieve("gpt-4o")


def test_an_access_line_for_every_request_and_the_reason_of_every_refusal(served: Served, text_model: Path,
                                                                         log: list[str]) -> None:
    log.clear()
    served.ollama().chat(model=str(text_model), options={"num_predict": 3}, messages=[{"role": "user", "content": "?"}])
    httpx.post(f"{served.url}/api/chat", json={"model": str(text_model), "messages": "no"})
    httpx.post(f"{served.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    httpx.get(f"{served.url}/nowhere")
    deadline = time.monotonic() + 10
    while len(log) < 4 and time.monotonic() < deadline:  # each line is written once its response has gone
        time.sleep(0.01)
    ok, bad, unknown, nowhere = log
    assert ok.startswith("POST /api/chat 200 model=") and ok.endswith(" ms")
    assert " stream=no images=0 tools=0 tokens=" in ok
    assert bad.startswith("POST /api/chat 400") and bad.endswith("refused: messages must be a list of objects")
    assert " 404 " in unknown and "refused: the model 'gpt-4o' does not exist" in unknown
    assert nowhere.startswith("GET /nowhere 404") and "refused: Not Found" in nowhere


def test_shutdown_says_stopped(text_model: Path, mmproj: Path, tmp_path: Path) -> None:
    env = {**os.environ, "LLAMADOC_HOME": str(tmp_path / "home"), "LLAMADOC_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llamadoc", "serve", "--model", str(text_model), "--mmproj",
                             str(mmproj), "--guard", "off", "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "serving" in proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert "stopped" in err and "finished documents" not in err and "Traceback" not in err
    assert proc.returncode == 0


def test_a_signal_deferred_before_the_server_listens_still_stops_it(text_model: Path, mmproj: Path,
                                                                   tmp_path: Path) -> None:
    """A SIGTERM that the CLI's handler had to defer (it landed inside a llama.cpp callback or a
    finalizer while the server started) is acted on once the server's own handlers take over:
    without that, the server never heard it and served on."""
    code = f"""
import signal
from llamadoc import interrupt
from llamadoc.guard import GuardPolicy
from llamadoc.server import serve
from llamadoc.server.options import ServeOptions
interrupt.install()
interrupt._requested = signal.SIGTERM  # as _handler leaves it when it cannot raise where it landed
serve(ServeOptions(model={str(text_model)!r}, mmproj={str(mmproj)!r}, guard=GuardPolicy(mode="off"), port=0),
      notify=print)
print("returned", flush=True)
"""
    script = tmp_path / "serve.py"
    script.write_text(code)
    env = {**os.environ, "LLAMADOC_HOME": str(tmp_path / "home"), "LLAMADOC_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.endswith("returned\n"), done.stderr[-2000:]
    assert "serving" not in done.stdout  # it stopped before saying it serves


# -- Llama 3.2 Vision (the mllama engine) ------------------------------------------------------

@pytest.fixture(scope="module")
def mllama_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    path = convert_fixture("tiny", tmp_path_factory.mktemp("mllama") / "tiny-mllama.gguf", "Q8_0")
    with offline_home(tmp_path_factory.mktemp("home")), serving(
            model=str(path), guard=GuardPolicy(mode="off"), max_tokens=64, ctx=1024) as s:
        yield s, path


def test_llama_vision_sees_the_most_recent_image_and_refuses_two_in_one_message(
        mllama_served: tuple[Served, Path], tmp_path: Path) -> None:
    s, path = mllama_served
    page, wide = tmp_path / "page.png", tmp_path / "wide.png"
    fixture_image("square").save(page)
    fixture_image("wide").save(wide)
    c = s.ollama()
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model=str(path), messages=[{"role": "user", "content": "?", "images": [page, wide]}])
    assert err.value.status_code == 400 and "one image per message" in err.value.error
    history = [{"role": "user", "content": "What is it?", "images": [page]}, {"role": "assistant", "content": "A chart."},
               {"role": "user", "content": "And this?", "images": [wide]}]
    later = c.chat(model=str(path), messages=history, options={"num_predict": 6})
    only_wide = c.chat(model=str(path), options={"num_predict": 6}, messages=[
        {"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A chart."},
        {"role": "user", "content": "And this?", "images": [wide]}])
    assert later.message.content == only_wide.message.content  # the earlier image is not what it reads
    scheduler = s.resident.batcher.scheduler
    assert scheduler is not None
    reused = scheduler.reused
    follow = c.chat(model=str(path), messages=[*history, {"role": "assistant", "content": later.message.content},
                                               {"role": "user", "content": "Why?"}], options={"num_predict": 6})
    assert follow.done and scheduler.reused - reused > 20  # its history came from the row's cache


def test_llama_vision_streams_stops_and_refuses_a_long_prompt(mllama_served: tuple[Served, Path]) -> None:
    s, path = mllama_served
    c = s.ollama()
    ask = [{"role": "user", "content": "Describe the chart."}]
    whole = c.chat(model=str(path), messages=ask, options={"num_predict": 30}).message.content
    stop = whole[len(whole) // 2: len(whole) // 2 + 2]
    parts = list(c.chat(model=str(path), messages=ask, stream=True, options={"num_predict": 30, "stop": [stop]}))
    assert "".join(p.message.content for p in parts) == whole[: whole.index(stop)] and len(parts) > 3
    with pytest.raises(ollama.ResponseError) as err:
        c.chat(model=str(path), messages=[{"role": "user", "content": "word " * 2000}])
    assert err.value.status_code == 400 and "the prompt is" in err.value.error and "context holds 1024" in err.value.error
    r = httpx.post(f"{s.url}/api/chat", json={"model": str(path), "stream": False, "messages": [
        {"role": "user", "content": "?", "images": [b64(Path(__file__))]}]})
    assert r.status_code == 400
