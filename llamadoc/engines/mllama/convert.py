"""Convert Meta's Llama 3.2 Vision checkpoint (Hugging Face safetensors + config) to Ollama's mllama GGUF.

Quantisation goes through ggml's own quantiser. Q4_K_M mixes types as llama.cpp's llama-quantize
does (Q6_K output and some attn_v / ffn_down, Q4_K elsewhere in the text model; K-quants need rows
that are multiples of 256 and fall back to Q5_0 / Q8_0 / F16 otherwise); the vision tower and
projector take Q8_0 there. Only numpy is needed: safetensors are read directly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamadoc.errors import ModelError, UsageError

from . import ggml
from .gguf_io import GGUFWriter
from .loader import MllamaConfig, TextConfig, VisionConfig, aspect_ratios

QUANTS = {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_M": 15}  # name -> llama.cpp file type
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER, TOKEN_UNUSED = 1, 3, 4, 5
ROW_CHUNK = 4096  # rows quantised per ggml call: bounds memory for the 128K-row embedding


# ---- reading safetensors without the safetensors package ----------------------------------------

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


@dataclass(frozen=True)
class _Source:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _read_safetensors(hf_dir: Path) -> dict[str, _Source]:
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{hf_dir}: no .safetensors files (a Hugging Face model folder is expected)")
    out: dict[str, _Source] = {}
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise ModelError(f"{f}: truncated safetensors file")
            n = int.from_bytes(head, "little")
            try:
                header = json.loads(fh.read(n))
            except (ValueError, UnicodeDecodeError):
                raise ModelError(f"{f}: not a safetensors file (bad header)") from None
        base, size = 8 + n, f.stat().st_size
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            if meta["dtype"] not in _ST_DTYPES:
                raise ModelError(f"{f}: tensor {name} has unsupported dtype {meta['dtype']}")
            start, end = meta["data_offsets"]
            if base + end > size:
                raise ModelError(f"{f}: truncated file (tensor {name} ends past its end)")
            out[name] = _Source(f, meta["dtype"], tuple(meta["shape"]), base + start, base + end)
    return out


def _load(src: _Source) -> np.ndarray:
    raw = np.memmap(src.file, dtype=np.uint8, mode="r", offset=src.start, shape=(src.end - src.start,))
    a = raw.view(_ST_DTYPES[src.dtype])
    if src.dtype == "BF16":  # bfloat16 is the top half of a float32
        a = (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32).reshape(src.shape)


# ---- configuration -----------------------------------------------------------------------------


def _rope_settings(text: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, llama3 scaling or None) from either spelling: rope_theta/rope_scaling or rope_parameters."""
    params = text.get("rope_parameters")
    if isinstance(params, dict):
        theta = float(params.get("rope_theta", text.get("rope_theta", 500000.0)))
        scaling: dict[str, Any] | None = params
    else:
        theta = float(text.get("rope_theta", 500000.0))
        scaling = text.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise ModelError(f"rope scaling {kind!r} is not supported (Llama 3.2 Vision uses 'llama3')")
    return theta, scaling


def rope_freq_factors(head_dim: int, theta: float, s: dict[str, Any]) -> np.ndarray:
    """Llama 3 RoPE scaling as per-frequency divisors of theta (ggml's rope freq_factors).

    The reference scales inv_freq (float32); ggml divides theta by a factor, so the factor is
    inv_freq / scaled inv_freq.
    """
    inv = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))))
    inv = inv.astype(np.float32)
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv.astype(np.float64)
    scaled = np.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    scaled = np.where(medium, smoothed, scaled).astype(np.float32)
    return (inv / scaled).astype(np.float32)


def hf_config(cfg: dict[str, Any]) -> MllamaConfig:
    """The engine's configuration from a Hugging Face Mllama config.json."""
    t, v = cfg["text_config"], cfg["vision_config"]
    n_head = t["num_attention_heads"]
    declared = sorted(tuple(x) for x in v.get("supported_aspect_ratios", []))
    if declared and declared != sorted(aspect_ratios(v.get("max_num_tiles", 4))):
        raise ModelError("the checkpoint's supported_aspect_ratios are not every grid of up to max_num_tiles tiles")
    text = TextConfig(
        n_layer=t["num_hidden_layers"], n_embd=t["hidden_size"], n_ff=t["intermediate_size"], n_head=n_head,
        n_head_kv=t.get("num_key_value_heads", n_head), head_dim=t.get("head_dim") or t["hidden_size"] // n_head,
        rope_base=_rope_settings(t)[0], eps=float(t.get("rms_norm_eps", 1e-5)), n_vocab=t["vocab_size"],
        n_ctx_train=t.get("max_position_embeddings", 131072), cross_layers=tuple(t["cross_attention_layers"]))
    vision = VisionConfig(
        n_layer=v["num_hidden_layers"], n_global=v["num_global_layers"],
        intermediate=tuple(v["intermediate_layers_indices"]), n_embd=v["hidden_size"],
        n_ff=v["intermediate_size"], n_head=v["attention_heads"], eps=float(v.get("norm_eps", 1e-5)),
        image_size=v["image_size"], patch_size=v["patch_size"], max_tiles=v.get("max_num_tiles", 4),
        n_channels=v.get("num_channels", 3))
    return MllamaConfig(text, vision)


# ---- tokenizer ---------------------------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _tokenizer_metadata(hf_dir: Path) -> dict[str, Any]:
    """Byte-level BPE vocabulary, merges, special ids and chat template as llama.cpp reads them."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{hf_dir}: tokenizer.json is missing")
    tok = json.loads(path.read_text())
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"{path}: a byte-level BPE tokenizer is expected, not {model.get('type')!r}")
    ids: dict[str, int] = dict(model["vocab"])
    special: set[str] = set()
    for added in tok.get("added_tokens", []):
        ids[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["content"])
    size = max(ids.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TOKEN_UNUSED] * size
    added_names = {a["content"] for a in tok.get("added_tokens", [])}
    for text, i in ids.items():
        tokens[i] = text
        types[i] = TOKEN_CONTROL if text in special else TOKEN_USER if text in added_names else TOKEN_NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    conf_path = hf_dir / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text()) if conf_path.is_file() else {}
    out: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    for key, conf_key in (("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token")):
        special_text = _token_text(conf.get(conf_key))
        if special_text is not None and special_text in ids:
            out[f"tokenizer.ggml.{key}_token_id"] = ids[special_text]
    template = conf.get("chat_template")
    for extra in ("chat_template.json", "chat_template.jinja"):
        p = hf_dir / extra
        if template is None and p.is_file():
            template = json.loads(p.read_text())["chat_template"] if extra.endswith(".json") else p.read_text()
    if isinstance(template, str):
        out["tokenizer.chat_template"] = template
    return out


# ---- tensor names and transforms ---------------------------------------------------------------

_PREFIXES = (  # transformers' legacy save names and the newer ones, normalised to one spelling
    ("language_model.model.", "model."), ("model.language_model.", "model."),
    ("language_model.lm_head.", "lm_head."), ("model.vision_model.", "vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)
_TEXT = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "cross_attn.q_proj.weight": "cross_attn_q_proj.weight",
    "cross_attn.k_proj.weight": "cross_attn_k_proj.weight", "cross_attn.v_proj.weight": "cross_attn_v_proj.weight",
    "cross_attn.o_proj.weight": "cross_attn_o_proj.weight", "cross_attn.q_norm.weight": "cross_attn_q_norm.weight",
    "cross_attn.k_norm.weight": "cross_attn_k_norm.weight", "cross_attn_attn_gate": "cross_attn_attn_gate",
    "cross_attn_mlp_gate": "cross_attn_mlp_gate",
}
_VISION_LAYER = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "input_layernorm.weight": "attn_norm.weight", "input_layernorm.bias": "attn_norm.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight", "post_attention_layernorm.bias": "ffn_norm.bias",
    "mlp.fc1.weight": "ffn_up.weight", "mlp.fc1.bias": "ffn_up.bias",
    "mlp.fc2.weight": "ffn_down.weight", "mlp.fc2.bias": "ffn_down.bias",
    "gate_attn": "attn_gate", "gate_ffn": "ffn_gate",
}
_VISION = {
    "patch_embedding.weight": "v.patch_embd.weight", "class_embedding": "v.class_embd",
    "gated_positional_embedding.embedding": "v.position_embd.weight",
    "gated_positional_embedding.tile_embedding.weight": "v.tile_position_embd.weight",
    "pre_tile_positional_embedding.embedding.weight": "v.pre_tile_position_embd.weight",
    "pre_tile_positional_embedding.gate": "v.pre_tile_position_embd.gate",
    "post_tile_positional_embedding.embedding.weight": "v.post_tile_position_embd.weight",
    "post_tile_positional_embedding.gate": "v.post_tile_position_embd.gate",
    "layernorm_pre.weight": "v.pre_ln.weight", "layernorm_pre.bias": "v.pre_ln.bias",
    "layernorm_post.weight": "v.post_ln.weight", "layernorm_post.bias": "v.post_ln.bias",
}


def _normalise(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder each head's rows from the reference's half-split RoPE layout to ggml's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class PlannedTensor:
    name: str
    make: Callable[[], np.ndarray]  # float32 values in numpy order
    shape: tuple[int, ...]  # numpy order
    kind: str  # "matmul", "rows", "conv", "dense": decides the stored type


def _plan_tensors(src: dict[str, _Source], cfg: dict[str, Any]) -> list[PlannedTensor]:
    t = cfg["text_config"]
    n_head, n_kv = t["num_attention_heads"], t.get("num_key_value_heads", t["num_attention_heads"])
    by_name = {_normalise(k): v for k, v in src.items()}
    out: list[PlannedTensor] = []
    used: set[str] = set()

    def take(hf: str, gg: str, kind: str, fn: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
        if hf not in by_name:
            raise ModelError(f"the checkpoint lacks tensor {hf}")
        used.add(hf)
        s = by_name[hf]
        out.append(PlannedTensor(gg, lambda: fn(_load(s)), s.shape if s.shape else (1,), kind))

    take("model.embed_tokens.weight", "token_embd.weight", "rows")
    for i in range(t["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        names = sorted(k[len(prefix):] for k in by_name if k.startswith(prefix))
        for rest in names:
            if rest not in _TEXT:
                raise ModelError(f"unexpected tensor {prefix}{rest} in the checkpoint")
            gg = f"blk.{i}.{_TEXT[rest]}"
            kind = "dense" if rest.endswith(("norm.weight", "_gate")) else "matmul"
            if rest in ("self_attn.q_proj.weight", "cross_attn.q_proj.weight"):
                take(prefix + rest, gg, kind, lambda a: permute_rope_rows(a, n_head))
            elif rest in ("self_attn.k_proj.weight", "cross_attn.k_proj.weight"):
                # Cross-attention q/k are permuted too, as Ollama's converter does (and its files
                # hold); the loader permutes the per-head q/k norms to match (see loader.py).
                take(prefix + rest, gg, kind, lambda a: permute_rope_rows(a, n_kv))
            else:
                take(prefix + rest, gg, kind)
    take("model.norm.weight", "output_norm.weight", "dense")
    take("lm_head.weight", "output.weight", "matmul")
    _, scaling = _rope_settings(t)
    if scaling is not None:
        head_dim = t.get("head_dim") or t["hidden_size"] // n_head
        theta = _rope_settings(t)[0]
        out.append(PlannedTensor("rope_freqs.weight", lambda: rope_freq_factors(head_dim, theta, scaling),
                           (head_dim // 2,), "dense"))

    v = cfg["vision_config"]
    for rest, gg in _VISION.items():
        kind = ("conv" if "patch" in rest else "rows" if "tile" in rest and rest.endswith("weight")
                else "dense")
        fn: Callable[[np.ndarray], np.ndarray] = np.tanh if rest.endswith(".gate") else (lambda a: a)
        take("vision_model." + rest, gg, kind, fn)
    # One stored gate becomes two, pre-transformed, as in Ollama's files.
    take("vision_model.gated_positional_embedding.gate", "v.position_embd.gate", "dense", lambda a: 1 - np.tanh(a))
    take("vision_model.gated_positional_embedding.gate", "v.tile_position_embd.gate", "dense", np.tanh)
    for stack, gg_stack, n in (("transformer", "v.blk", v["num_hidden_layers"]),
                               ("global_transformer", "v.global.blk", v["num_global_layers"])):
        for i in range(n):
            prefix = f"vision_model.{stack}.layers.{i}."
            for rest in sorted(k[len(prefix):] for k in by_name if k.startswith(prefix)):
                if rest not in _VISION_LAYER:
                    raise ModelError(f"unexpected tensor {prefix}{rest} in the checkpoint")
                gate = rest.startswith("gate_")
                kind = "dense" if (gate or rest.endswith("bias") or "norm" in rest) else "matmul"
                take(prefix + rest, f"{gg_stack}.{i}.{_VISION_LAYER[rest]}", kind, np.tanh if gate else (lambda a: a))
    take("multi_modal_projector.weight", "mm.0.weight", "matmul")
    take("multi_modal_projector.bias", "mm.0.bias", "dense")
    extra = sorted(set(by_name) - used)
    if extra:
        raise ModelError(f"unexpected tensor {extra[0]} in the checkpoint (not a Llama 3.2 Vision model?)")
    return out


# ---- type selection (llama.cpp's Q4_K_M recipe) ------------------------------------------------


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ggml_type: int, n_cols: int) -> int:
    """llama.cpp's fallback for rows the type's block does not divide."""
    if ggml_type in (ggml.F32, ggml.F16) or n_cols % ggml.lib.blck_size(ggml_type) == 0:
        return ggml_type
    ggml_type = {ggml.Q4_K: ggml.Q5_0, ggml.Q5_K: ggml.Q5_1, ggml.Q6_K: ggml.Q8_0}.get(ggml_type, ggml_type)
    return ggml_type if n_cols % ggml.lib.blck_size(ggml_type) == 0 else ggml.F16


def choose_types(tensors: list[PlannedTensor], quant: str) -> dict[str, int]:
    types: dict[str, int] = {}
    n_attn_v = sum(1 for t in tensors if t.name.endswith("attn_v.weight") and t.name.startswith("blk."))
    n_ffn_down = sum(1 for t in tensors if t.name.endswith("ffn_down.weight") and t.name.startswith("blk."))
    i_attn_v = i_ffn_down = 0
    for t in tensors:
        n_cols = t.shape[-1]
        if t.kind == "dense" or quant == "F32":
            types[t.name] = ggml.F32
        elif quant == "F16" or t.kind == "conv" or (t.kind == "rows" and t.name.startswith("v.")):
            types[t.name] = ggml.F16  # the patch kernel meets F32 pixels in im2col; lookup tables stay exact
        elif quant == "Q8_0" or t.name.startswith(("v.", "mm.")):
            types[t.name] = _fallback(ggml.Q8_0, n_cols)
        else:  # Q4_K_M, text model
            want = ggml.Q4_K
            if t.name == "output.weight":
                want = ggml.Q6_K if n_cols % 256 == 0 else ggml.Q8_0
            elif t.name.endswith("attn_v.weight"):
                want = ggml.Q6_K if _more_bits(i_attn_v, n_attn_v) else ggml.Q4_K
                i_attn_v += 1
            elif t.name.endswith("ffn_down.weight"):
                want = ggml.Q6_K if _more_bits(i_ffn_down, n_ffn_down) else ggml.Q4_K
                i_ffn_down += 1
            types[t.name] = _fallback(want, n_cols)
    return types


def _encode(values: np.ndarray, ggml_type: int) -> Iterator[bytes]:
    if ggml_type == ggml.F32:
        yield values.astype("<f4").tobytes()
    elif ggml_type == ggml.F16:
        yield values.astype("<f2").tobytes()
    else:
        rows = values.reshape(-1, values.shape[-1])
        for start in range(0, len(rows), ROW_CHUNK):
            yield ggml.quantize_rows(ggml_type, rows[start:start + ROW_CHUNK])


@dataclass
class ConversionReport:
    path: Path
    quant: str
    n_tensors: int
    types: dict[str, int] = field(default_factory=dict)  # type name -> tensor count
    fallbacks: list[str] = field(default_factory=list)  # tensors whose rows did not fit the wanted quant
    bytes: int = 0


def _prepare(hf: Path, quant: str) -> tuple[dict[str, Any], list[PlannedTensor], dict[str, int]]:
    """The checkpoint's engine metadata, the tensors to write and their types; nothing is converted yet."""
    cfg_path = hf / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{hf}: config.json is missing (a Hugging Face model folder is expected)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "mllama" or "text_config" not in cfg or "vision_config" not in cfg:
        raise ModelError(f"{cfg_path}: not a Llama 3.2 Vision (mllama) checkpoint "
                         f"(model_type {cfg.get('model_type')!r})")
    try:
        config = hf_config(cfg)
    except KeyError as err:
        raise ModelError(f"{cfg_path}: missing setting {err}") from None
    metadata = {"general.file_type": QUANTS[quant], "general.quantization_version": 2,
                **config.gguf_metadata(), **_tokenizer_metadata(hf)}
    tensors = _plan_tensors(_read_safetensors(hf), cfg)
    return metadata, tensors, choose_types(tensors, quant)


def _quant(quant: str) -> str:
    quant = quant.upper()
    if quant not in QUANTS:
        raise UsageError(f"unknown quantisation {quant!r}; choose one of {', '.join(QUANTS)}")
    return quant


def planned_size(hf_dir: str | os.PathLike[str], quant: str = "F16") -> int:
    """About how many bytes ``convert`` writes: every tensor at its type, plus the tokenizer's metadata.

    For a disk-space check before converting; reads only the checkpoint's headers.
    """
    hf = Path(hf_dir)
    _metadata, tensors, types = _prepare(hf, _quant(quant))
    align = 32  # GGUF's default alignment
    data = sum(-(-_tensor_bytes(types[t.name], t.shape) // align) * align for t in tensors)
    tokenizer = hf / "tokenizer.json"
    return data + (tokenizer.stat().st_size if tokenizer.is_file() else 0) + (1 << 20)


def _tensor_bytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    return int(ggml.lib.row_size(ggml_type, shape[-1])) * math.prod(shape[:-1])


def convert(hf_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], quant: str = "F16",
            on_tensor: Callable[[str, int, int], None] | None = None, name: str | None = None) -> ConversionReport:
    """Convert a Hugging Face Mllama checkpoint folder to one GGUF (``llamadoc models convert``).

    quant: F32, F16, Q8_0 or Q4_K_M. ``on_tensor(name, index, count)`` reports progress.
    ``name`` goes in general.name (the folder's name by default).
    The output appears only when complete (written to OUT.part, then renamed; an exception
    removes the part file, and a rerun overwrites one that a killed process left).
    """
    quant = _quant(quant)
    hf = Path(hf_dir)
    metadata, tensors, types = _prepare(hf, quant)
    metadata = {"general.name": name or hf.name, **metadata}
    report = ConversionReport(Path(out_path), quant, len(tensors))
    writer = GGUFWriter(out_path, metadata)
    for index, t in enumerate(tensors):
        ggml_type = types[t.name]
        type_name = ggml.type_name(ggml_type)
        report.types[type_name] = report.types.get(type_name, 0) + 1
        if quant == "Q4_K_M" and t.kind == "matmul" and not t.name.startswith(("v.", "mm.")) \
                and ggml_type not in (ggml.Q4_K, ggml.Q6_K):
            report.fallbacks.append(f"{t.name} -> {type_name}")

        def chunks(t: PlannedTensor = t, ggml_type: int = ggml_type, index: int = index) -> Iterable[bytes]:
            if on_tensor:
                on_tensor(t.name, index, len(tensors))
            values = t.make()
            if values.shape != t.shape and values.size == math.prod(t.shape):
                values = values.reshape(t.shape)
            return _encode(values, ggml_type)

        writer.add_tensor(t.name, ggml_type, tuple(reversed(t.shape)), chunks)
    report.bytes = writer.write()
    return report
