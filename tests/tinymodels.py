"""Tiny random-weight GGUF models for tests: a llama text model and vision projectors.

They run through the real llama.cpp / libmtmd code; only the weights are fake. See
../shared/design/test-models.md for why each detail below matters.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_TOKENS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|image|>",
]
TEXT_WIDTH = 64


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 byte tokens of a byte-level BPE vocabulary."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    table = dict(zip(printable, chars, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_text_model(
    path: Path,
    *,
    seed: int = 0,
    n_layer: int = 2,
    width: int = TEXT_WIDTH,
    chat_template: str | None = CHATML_TEMPLATE,
    context: int = 4096,
    control: list[str] = CONTROL_TOKENS,
    bos: int = 0,
    eos: int = 2,
    merges: tuple[tuple[str, str], ...] = (("Ġ", "t"), ("h", "e"), ("Ġt", "he")),
    unused_merges: tuple[tuple[str, str], ...] = (),
) -> Path:
    """A llama-architecture chat model, F32, about half a megabyte. ``unused_merges`` only
    lengthen the merges list (of control tokens, which text never produces), to give the
    file a real tokenizer's size."""
    rng = np.random.default_rng(seed)
    byte_tokens = _byte_alphabet()
    merged = [a + b for a, b in merges]
    tokens = control + byte_tokens + merged
    # Non-printing bytes are typed CONTROL: the tokenizer still maps input bytes to
    # them, but generated ones detokenize to nothing. Random weights would otherwise
    # emit bytes >= 0x80, and a text ending mid UTF-8 sequence makes
    # llama-cpp-python ignore max_tokens.
    printable = [b == 0x0A or 0x20 <= b < 0x7F for b in range(256)]
    types = (
        [gguf.TokenType.CONTROL] * len(control)
        + [gguf.TokenType.NORMAL if ok else gguf.TokenType.CONTROL for ok in printable]
        + [gguf.TokenType.NORMAL] * len(merged)
    )
    n_vocab, n_head, n_ff = len(tokens), 4, 2 * width

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("llamadoc tiny test model")
    w.add_context_length(context)
    w.add_embedding_length(width)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(width // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges + unused_merges])
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)  # the end-of-turn token
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(n_vocab, width))
    w.add_tensor("output_norm.weight", np.ones(width, np.float32))
    w.add_tensor("output.weight", rand(n_vocab, width))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(width, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", rand(width, width))
        w.add_tensor(p + "ffn_norm.weight", np.ones(width, np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, width))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, width))
        w.add_tensor(p + "ffn_down.weight", rand(width, n_ff))
    _finish(w)
    return path


# Llama Guard 3 1B's chat template as published with the model (tokenizer_config.json),
# so tests can hold llamadoc.guard.build_prompt against the model's own rendering.
GUARD_TEMPLATE = (
    "{%- if messages|length % 2 == 0 -%}{%- set role = 'Agent' -%}{%- else -%}{%- set role = 'User' -%}"
    "{%- endif -%}"
    "{%- if categories is not defined -%}{%- set categories = ({"
    "'S1': 'Violent Crimes.', 'S2': 'Non-Violent Crimes.', 'S3': 'Sex Crimes.', "
    "'S4': 'Child Exploitation.', 'S5': 'Defamation.', 'S6': 'Specialized Advice.', 'S7': 'Privacy.', "
    "'S8': 'Intellectual Property.', 'S9': 'Indiscriminate Weapons.', 'S10': 'Hate.', 'S11': 'Self-Harm.', "
    "'S12': 'Sexual Content.', 'S13': 'Elections.'}) -%}{%- endif -%}"
    "{{- '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n' -}}"
    "{%- set ns = namespace(contains_image=false) -%}"
    "{%- for message in messages -%}{%- for content in message['content'] | selectattr('type', 'equalto', 'image') -%}"
    "{%- set ns.contains_image = true -%}{%- endfor -%}{%- endfor -%}"
    "{%- if ns.contains_image -%}{{- '<|image|> ' -}}{%- endif -%}"
    "{{- \"Task: Check if there is unsafe content in '\" + role + \"' messages in conversations according our "
    "safety policy with the below categories.\\n\\n\" -}}"
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\n' -}}"
    "{%- for key in categories -%}{%- if key not in excluded_category_keys -%}"
    "{{- key + ': ' + categories[key] + '\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<END UNSAFE CONTENT CATEGORIES>\n\n' -}}{{- '<BEGIN CONVERSATION>\n\n' -}}"
    "{%- for message in messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{%- set role = 'User' -%}"
    "{%- elif message['role'] == 'assistant' -%}{%- set role = 'Agent' -%}{%- endif -%}"
    "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- role + ': ' + content['text'] | trim + '\n\n' -}}{%- endfor -%}{%- endfor -%}"
    "{{- '<END CONVERSATION>\n\n' -}}"
    "{{- 'Provide your safety assessment for ONLY THE LAST ' + role + ' message in the above conversation:\n' -}}"
    "{{- \" - First line must read 'safe' or 'unsafe'.\\n\" -}}"
    "{{- ' - If unsafe, a second line must include a comma-separated list of violated categories. "
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>' -}}"
)


def write_guard_model(path: Path, *, seed: int = 3, context: int = 4096) -> Path:
    """A Llama-3-tokenised text model shaped like Llama Guard 3 1B (random weights)."""
    merges = (("s", "a"), ("sa", "f"), ("saf", "e"), ("u", "n"), ("un", "safe"), ("Ċ", "Ċ"))
    return write_text_model(
        path, seed=seed, chat_template=GUARD_TEMPLATE, context=context, control=LLAMA3_TOKENS,
        bos=0, eos=4, merges=merges,
    )


def write_mmproj(path: Path, projector: str = "mlp", *, seed: int = 1, text_width: int = TEXT_WIDTH) -> Path:
    """A CLIP vision projector ('mlp' as in LLaVA, or 'gemma3') for 32x32 images, patch 8."""
    rng = np.random.default_rng(seed)
    e, ff, patch, size = 32, 48, 8, 32  # ff != e, or clip.cpp guesses up/down the wrong way
    n_patches = (size // patch) ** 2

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", projector)
    w.add_uint32("clip.vision.embedding_length", e)
    w.add_uint32("clip.vision.feed_forward_length", ff)
    w.add_uint32("clip.vision.block_count", 1)
    w.add_uint32("clip.vision.attention.head_count", 2)
    w.add_uint32("clip.vision.projection_dim", text_width)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.image_size", size)
    w.add_uint32("clip.vision.patch_size", patch)
    w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    w.add_bool("clip.use_gelu", True)
    w.add_tensor("v.patch_embd.weight", rand(e, 3, patch, patch))
    w.add_tensor("v.patch_embd.bias", rand(e))
    w.add_tensor("v.position_embd.weight", rand(n_patches, e))
    p = "v.blk.0."
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        w.add_tensor(p + name + ".weight", rand(e, e))
        w.add_tensor(p + name + ".bias", rand(e))
    for name in ("ln1", "ln2"):
        w.add_tensor(p + name + ".weight", np.ones(e, np.float32))
        w.add_tensor(p + name + ".bias", np.zeros(e, np.float32))
    w.add_tensor(p + "ffn_up.weight", rand(ff, e))
    w.add_tensor(p + "ffn_up.bias", rand(ff))
    w.add_tensor(p + "ffn_down.weight", rand(e, ff))
    w.add_tensor(p + "ffn_down.bias", rand(e))
    if projector == "mlp":
        w.add_tensor("mm.0.weight", rand(text_width, e))
        w.add_tensor("mm.0.bias", rand(text_width))
        w.add_tensor("mm.2.weight", rand(text_width, text_width))
        w.add_tensor("mm.2.bias", rand(text_width))
    elif projector == "gemma3":
        w.add_uint32("clip.vision.projector.scale_factor", 2)
        w.add_tensor("v.post_ln.weight", np.ones(e, np.float32))
        w.add_tensor("v.post_ln.bias", np.zeros(e, np.float32))
        w.add_tensor("mm.soft_emb_norm.weight", np.ones(e, np.float32))
        w.add_tensor("mm.input_projection.weight", rand(e, text_width))
    else:
        raise ValueError(f"no tiny generator for projector {projector!r}")
    _finish(w)
    return path


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
