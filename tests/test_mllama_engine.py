"""MllamaEngine and the Llama Guard backend through llamadoc's engine protocol, on the tiny fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mllama_helpers import REPO, convert_fixture, fixture_image

pytest.importorskip("llama_cpp")
jsonschema = pytest.importorskip("jsonschema")

from llamadoc.engines.base import (  # noqa: E402
    GenerationRequest,
    GuardEngine,  # noqa: E402
    JudgeRequest,
    LoadOptions,
    Sampling,
    VisionEngine,
)
from llamadoc.engines.mllama import ggml  # noqa: E402
from llamadoc.engines.mllama.backend import (  # noqa: E402
    Device,
    cpu_device,
    describe_backends,
    flash_attention_supported,
)
from llamadoc.engines.mllama.engine import MllamaEngine, MllamaGuardEngine  # noqa: E402
from llamadoc.engines.mllama.memory import estimate_model_memory  # noqa: E402
from llamadoc.errors import ResourceError, UsageError  # noqa: E402
from llamadoc.guard import ANSWER_PREFIX, MAX_VERDICT_TOKENS, VERDICT_GRAMMAR, build_prompt  # noqa: E402


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fixture("tiny", tmp_path_factory.mktemp("engine") / "tiny.gguf", "Q8_0")


@pytest.fixture(scope="module")
def engine(path: Path) -> Iterator[MllamaEngine]:
    e = MllamaEngine(LoadOptions(model_path=str(path), threads=1, max_tokens=64))
    yield e
    e.close()


def test_engine_protocol(engine: MllamaEngine) -> None:
    assert isinstance(engine, VisionEngine)
    assert (engine.name, engine.max_images, engine.supports_schema) == ("mllama", 1, True)
    assert engine.device == "CPU" and engine.gpu_layers == 0
    assert engine.model.n_ctx == 2048 + 256  # LoadOptions.prompt_tokens + max_tokens, rounded to 256


def test_schema_constrained_page_answer(engine: MllamaEngine) -> None:
    schema = {"type": "object", "required": ["paid"], "properties": {"paid": {"type": "boolean"}}}
    req = GenerationRequest(prompt="Is the invoice paid?", images=(fixture_image("square"),), schema=schema,
                            max_tokens=32)
    out = engine.generate(req)
    jsonschema.validate(json.loads(out.text), schema)
    assert out.finish_reason == "stop" and out.completion_tokens > 0 and out.prompt_tokens > 10
    t = out.timings_ms  # the split the pipeline copies into each page's timings
    assert {"model", "vision_encode", "prefill", "decode"} <= set(t) and "decode_steps" not in t
    assert 0 < t["vision_encode"] + t["prefill"] + t["decode"] <= t["model"] + 0.05


def test_batched_requests_equal_single_ones(engine: MllamaEngine) -> None:
    reqs = [GenerationRequest(prompt=p, images=imgs, max_tokens=8, system=sys_text)
            for p, imgs, sys_text in (("Total?", (fixture_image("wide"),), None),
                                      ("Date?", (), "Answer briefly."),
                                      ("Vendor?", (fixture_image("gray"),), "Answer briefly."))]
    batch = engine.generate_batch(reqs)
    assert [r.text for r in batch] == [engine.generate(r).text for r in reqs]


def test_request_limits(engine: MllamaEngine) -> None:
    two = GenerationRequest(prompt="x", images=(fixture_image("wide"), fixture_image("tiny")))
    with pytest.raises(UsageError, match="one image per message"):
        engine.generate(two)
    with pytest.raises(UsageError, match="inside the file"):
        MllamaEngine(LoadOptions(model_path="m.gguf", mmproj_path="p.gguf"))


def test_sampling_options_reach_the_sampler(engine: MllamaEngine) -> None:
    req = GenerationRequest(prompt="Describe the page.", images=(fixture_image("tall"),), max_tokens=12,
                            sampling=Sampling(temperature=1.2, top_p=0.9, seed=3))
    assert engine.generate(req).text == engine.generate(req).text


def judge_request(prompt: str, image: object) -> JudgeRequest:
    return JudgeRequest(prompt=prompt, answer_prefix=ANSWER_PREFIX, grammar=VERDICT_GRAMMAR,
                        max_tokens=MAX_VERDICT_TOKENS, unsafe_word="unsafe", image=image)  # type: ignore[arg-type]


def test_vision_guard_judges_a_page_with_its_prompt(path: Path) -> None:
    guard = MllamaGuardEngine(LoadOptions(model_path=str(path), threads=1), "tiny-vision-guard")
    try:
        assert isinstance(guard, GuardEngine) and guard.sees_images
        out = guard.judge(judge_request(build_prompt(["Is this invoice paid?"], image=True), fixture_image("square")))
        assert out.text == "safe" or out.text.startswith("unsafe\nS")  # decoded under the verdict grammar
        assert out.p_unsafe is not None and 0.0 <= out.p_unsafe <= 1.0
        with pytest.raises(UsageError, match="no <\\|image\\|> token"):
            guard.judge(judge_request(build_prompt(["no image token here"]), fixture_image("square")))
        pieces = guard.split("word " * 50, 20)
        assert len(pieces) > 1 and "".join(pieces) == "word " * 50
    finally:
        guard.close()


def test_backends_and_memory_estimate(path: Path) -> None:
    assert flash_attention_supported(cpu_device(), 128, 32, 8, ggml.F16)  # the 11B's text heads
    assert flash_attention_supported(cpu_device(), 80, 16, 16, ggml.F32)  # its vision heads
    devices = describe_backends()
    assert any(d["kind"] == "CPU" and d["backend"] == "CPU" for d in devices)
    assert all({"name", "description", "memory_free", "memory_total"} <= set(d) for d in devices)
    est = estimate_model_memory(path, n_ctx=4096)
    assert est.parts["GPU"]["weights"] > 0 and est.parts["GPU"]["kv_cache"] > 0
    assert est.parts["CPU"]["weights"] > 0  # token embeddings stay on the CPU
    assert estimate_model_memory(path, n_gpu_layers=0).total("GPU") == 0
    small = Device(0, "CUDA0", "a small GPU", "GPU", memory_free=256 << 20, memory_total=1 << 30)
    with pytest.raises(ResourceError, match=r"needs \d+\.\d GiB on CUDA0 \(a small GPU\) .* 0\.2 GiB are free"):
        est.check(small)


def test_image_weights_take_the_cpus_fastest_type(engine: MllamaEngine) -> None:
    """Q8_0 matrices that only images meet become BF16 where the CPU multiplies BF16 natively; the
    projector is held split by the vision state it reads (its sum is checked by the reference tests)."""
    m = engine.model
    t, c = m.weights.t, m.config
    want = ggml.BF16 if ggml.lib.cpu_has_avx512_bf16() else ggml.Q8_0
    for name in ("v.blk.0.ffn_up.weight", "v.global.blk.0.attn_q.weight",
                 f"blk.{c.text.cross_layers[0]}.cross_attn_k_proj.weight"):
        assert ggml.tensor(t[name]).type == want, name
    assert ggml.tensor(t["blk.0.ffn_up.weight"]).type == ggml.Q8_0  # the text model stays as stored
    blocks = [t[f"mm.0.weight.{j}"] for j in range(1 + len(c.vision.intermediate))]
    assert all(ggml.shape(b)[:2] == (c.vision.n_embd, c.text.n_embd) for b in blocks)
    assert {ggml.tensor(b).type for b in blocks} == {ggml.BF16 if want == ggml.BF16 else ggml.F16}


@pytest.mark.parametrize("engine", ["llamadoc.engines.mllama.ggml", "llamadoc.engines.mtmd", "llamadoc.engines.llama",
                                    "llamadoc.engines.mllama.tokenizer", "llamadoc.engines.mllama.sampling"])
@pytest.mark.parametrize("env,want", [
    ({}, "10000"),  # libgomp's default spins 300,000 times at each barrier before it sleeps
    ({"GOMP_SPINCOUNT": "50"}, "50"),  # the user's count stays
    ({"OMP_WAIT_POLICY": "active"}, None),  # so does the user's policy, with libgomp's count for it
])
def test_openmp_threads_spin_briefly_unless_the_user_chose(engine: str, env: dict[str, str], want: str | None) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = f"import os, {engine}; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, **env, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert out == str(want)


def test_libgomp_reads_the_spin_count_whichever_engine_module_loads_it_first() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for module in ("llamadoc.engines.mllama.tokenizer", "llamadoc.engines.mllama.sampling", "llamadoc.engines.mllama.ggml"):
        shown = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True,
                               env={**base, "OMP_DISPLAY_ENV": "verbose", "PYTHONPATH": str(REPO)}, check=True,
                               timeout=120).stderr
        assert "GOMP_SPINCOUNT = '10000'" in shown, (module, shown[-500:])
