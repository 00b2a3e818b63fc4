"""The Hugging Face -> GGUF converter: Ollama's layout, both RoPE spellings, llama.cpp's Q4_K_M recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.mllama_helpers import FIXTURES

pytest.importorskip("llama_cpp")

from llamadoc.engines.mllama import ggml  # noqa: E402
from llamadoc.engines.mllama.convert import _fallback, convert  # noqa: E402
from llamadoc.engines.mllama.gguf_io import GGUFFile  # noqa: E402


def test_layout_and_metadata(tmp_path: Path) -> None:
    report = convert(FIXTURES / "tiny" / "checkpoint", tmp_path / "tiny.gguf", "F16")
    f = GGUFFile(report.path)
    assert f.get("general.architecture") == "mllama"
    assert f.get("mllama.attention.cross_attention_layers") == [1, 3]
    assert f.get("mllama.vision.intermediate_layers_indices") == [0, 2, 3]
    assert f.get("mllama.vision.max_num_tiles") == 4 and f.get("mllama.vision.image_size") == 56
    assert f.get("tokenizer.ggml.pre") == "llama-bpe" and len(f.get("tokenizer.ggml.tokens")) == 301
    assert f.get("tokenizer.ggml.tokens")[300] == "<|image|>"
    assert "tokenizer.chat_template" in f.keys()
    t = f.tensors
    assert t["token_embd.weight"].ne == (64, 308)  # the image token and 7 more have rows
    assert t["v.tile_position_embd.weight"].ne == (4 * 17 * 32, 9)
    assert t["rope_freqs.weight"].ne == (8,) and t["rope_freqs.weight"].type == ggml.F32
    # Gates as Ollama stores them: vision ones pre-transformed (two from one), text ones raw.
    for name in ("v.position_embd.gate", "v.tile_position_embd.gate", "blk.1.cross_attn_attn_gate",
                 "v.global.blk.0.attn_gate"):
        assert t[name].ne == (1,) and t[name].type == ggml.F32
    assert t["blk.0.attn_q.weight"].type == ggml.F16 and t["blk.0.attn_norm.weight"].type == ggml.F32
    assert report.n_tensors == len(t) == 149
    f.close()


def test_both_rope_spellings_give_the_same_file(tmp_path: Path) -> None:
    src = FIXTURES / "tiny" / "checkpoint"
    legacy = tmp_path / "legacy" / "checkpoint"
    shutil.copytree(src, legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    rope = cfg["text_config"].pop("rope_parameters")
    cfg["text_config"]["rope_theta"] = rope.pop("rope_theta")
    cfg["text_config"]["rope_scaling"] = rope
    (legacy / "config.json").write_text(json.dumps(cfg))
    a = convert(src, tmp_path / "a.gguf", "F32").path.read_bytes()
    b = convert(legacy, tmp_path / "b.gguf", "F32").path.read_bytes()
    assert a == b


def test_q4_k_m_mix_follows_llama_cpp(tmp_path: Path) -> None:
    report = convert(FIXTURES / "k256" / "checkpoint", tmp_path / "k.gguf", "Q4_K_M")
    t = GGUFFile(report.path).tensors
    name = {k: ggml.type_name(v.type) for k, v in t.items()}
    assert name["output.weight"] == "q6_K"
    assert name["blk.0.attn_v.weight"] == "q6_K"  # use_more_bits: the only attn_v is both first and last
    assert name["blk.0.ffn_down.weight"] == "q4_K" and name["blk.1.ffn_down.weight"] == "q6_K"
    assert name["blk.0.attn_q.weight"] == "q4_K" and name["token_embd.weight"] == "q4_K"
    assert name["v.blk.0.attn_q.weight"] == "q8_0" and name["v.patch_embd.weight"] == "f16"
    assert name["mm.0.weight"] == "q8_0"
    assert report.fallbacks == []


def test_rows_that_do_not_fit_fall_back_as_llama_cpp_does() -> None:
    assert _fallback(ggml.Q4_K, 512) == ggml.Q4_K
    assert _fallback(ggml.Q4_K, 64) == ggml.Q5_0
    assert _fallback(ggml.Q6_K, 64) == ggml.Q8_0
    assert _fallback(ggml.Q4_K, 48) == ggml.F16
    assert _fallback(ggml.Q8_0, 48) == ggml.F16


def test_tiny_q4_k_m_reports_its_fallbacks(tmp_path: Path) -> None:
    report = convert(FIXTURES / "tiny" / "checkpoint", tmp_path / "t.gguf", "Q4_K_M")
    assert "blk.0.ffn_gate.weight -> q5_0" in report.fallbacks  # rows of 64: no K-quant
    assert "output.weight -> q8_0" in report.fallbacks
    assert not (tmp_path / "t.gguf.part").exists()
