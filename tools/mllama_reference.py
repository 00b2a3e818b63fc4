"""Regenerate the mllama test fixtures: tiny random Llama 3.2 Vision checkpoints and Meta-faithful outputs.

Needs torch and transformers (the optional 'reference' extra), never the test run. Run from the
repository root:

    python -m tools.mllama_reference            # rewrites tests/fixtures/mllama/*

transformers' Mllama differs from Meta's reference in two places, corrected here:
  1. the vision encoder keeps the OUTPUT of the intermediate layers; Meta keeps their INPUT;
  2. rows before the first <|image|> still get the cross-attention output; Meta zeroes it.
The run checks that rows before the image then equal a text-only run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessorPil,
    PreTrainedTokenizerFast,
)
from transformers.models.mllama import modeling_mllama as mm

from tests.mllama_helpers import FIXTURES, GRIDS, IMAGES, fixture_image

TILE = 56
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Llama 3's pre-tokenizer split, which llama.cpp's "llama-bpe" implements.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|finetune_right_pad_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
            "<|reserved_special_token_1|>"]
CORPUS = ("The invoice total is due on receipt. Please describe the chart and the table on this page. "
          "What is the amount, the date and the name of the vendor? Answer in JSON with the fields. ") * 20
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if m['content'] is string %}{{- m['content'] }}{%- else %}{%- for c in m['content'] %}"
    "{%- if c['type'] == 'image' %}{{- '<|image|>' }}{%- elif c['type'] == 'text' %}{{- c['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

# Two tiny models: "tiny" exercises the structure (GQA, two cross layers, five vision layers kept
# as three intermediates); "k256" has text rows of 256 so the K-quants apply.
SPECS: dict[str, dict[str, Any]] = {
    "tiny": {
        "dtype": torch.float16,
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                       attention_heads=2, intermediate_layers_indices=[0, 2, 3]),
        "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
                     num_key_value_heads=2, cross_attention_layers=[1, 3]),
        "rope": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
        "legacy_rope_keys": False,
        "output_std": 0.5,
        "bigram": 0.0,
        "max_position_embeddings": 512,
        "images": list(IMAGES),  # pixel values and vision outputs for every fixture image
    },
    "k256": {
        "dtype": torch.bfloat16,
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                       attention_heads=2, intermediate_layers_indices=[0, 1]),
        "text": dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, cross_attention_layers=[1]),
        "rope": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "legacy_rope_keys": True,  # rope_theta + rope_scaling, as Meta's hub config.json spells it
        "output_std": 0.25,
        "bigram": 6.0,
        "max_position_embeddings": 131072,
        "images": ["square", "wide"],
    },
}


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE of 300 tokens plus <|image|> (id 300 = vocab_size), Llama 3 style."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300 - len(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    tok.add_special_tokens(SPECIALS + ["<|image|>"])
    assert tok.get_vocab_size() == 301 and tok.token_to_id("<|image|>") == 300
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(spec: dict[str, Any], tok: PreTrainedTokenizerFast, seed: int) -> MllamaForConditionalGeneration:
    torch.manual_seed(seed)
    v = dict(spec["vision"], image_size=TILE, patch_size=14, max_num_tiles=4, norm_eps=1e-5)
    v["vision_output_dim"] = v["hidden_size"] * (1 + len(v["intermediate_layers_indices"]))
    t = dict(spec["text"], vocab_size=300, rms_norm_eps=1e-5, max_position_embeddings=spec["max_position_embeddings"],
             rope_parameters=spec["rope"],
             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = MllamaConfig(vision_config=v, text_config=t, image_token_index=300)
    model = MllamaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name and p.numel() == 1:
                # Fresh models have every gate at zero: the image would change nothing.
                p.fill_(float(torch.empty(1).uniform_(0.4, 1.2)) * (1 if torch.rand(1) > 0.3 else -1))
            elif "norm" in name and p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))  # non-uniform norms: a wrong permutation shows
            elif name.endswith("lm_head.weight"):
                p.normal_(0, spec["output_std"])
        if spec["bigram"]:
            # A trained model is confident about many next tokens; random weights are not. A
            # fixed "next token" map through the residual stream (output row of successor(t)
            # along t's embedding) gives confident rows, so top-1 comparisons mean something.
            embed = model.model.language_model.embed_tokens.weight[:300]
            succ = torch.randperm(300)
            unit = embed / embed.norm(dim=1, keepdim=True).clamp_min(1e-6)  # the padding row is zero
            model.lm_head.weight[succ] += spec["bigram"] * unit
        for p in model.parameters():  # exactly representable in the stored dtype
            p.copy_(p.to(spec["dtype"]).float())
    return model


def apply_meta_semantics() -> None:
    """Patch transformers' Mllama to Meta's reference behaviour (see the module docstring)."""

    def encoder_forward(self: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        inputs = ()
        for layer in self.layers:
            inputs = inputs + (hidden_states,)  # the layer's INPUT, as Meta keeps it
            hidden_states = layer(hidden_states=hidden_states, attention_mask=attention_mask)
        return mm.BaseModelOutput(last_hidden_state=hidden_states, hidden_states=inputs)

    def cross_layer_forward(self: Any, hidden_states: torch.Tensor, cross_attention_states: torch.Tensor,
                            cross_attention_mask: torch.Tensor, attention_mask: torch.Tensor,
                            full_text_row_masked_out_mask: torch.Tensor | None, cache: Any = None,
                            **kwargs: Any) -> torch.Tensor:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("position_ids", "use_cache", "position_embeddings")}
        rows = full_text_row_masked_out_mask[:, 0] if full_text_row_masked_out_mask is not None else 1
        h, _ = self.cross_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=cross_attention_mask,
                               cross_attention_states=cross_attention_states, cache=cache, **kwargs)
        hidden_states = hidden_states + self.cross_attn_attn_gate.tanh() * (rows * h)  # zeroed before the image
        h = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.cross_attn_mlp_gate.tanh() * (rows * h)

    mm.MllamaVisionEncoder.forward = encoder_forward
    mm.MllamaCrossAttentionDecoderLayer.forward = cross_layer_forward


def cross_mask(ids: list[int], image_token: int, n_tiles: int) -> torch.Tensor:
    """Tokens from the first <|image|> on attend to the image's tiles (the processor's rule)."""
    m = torch.zeros(1, len(ids), 1, 4, dtype=torch.long)
    if image_token in ids:
        m[0, ids.index(image_token):, 0, :n_tiles] = 1
    return m


def forward(model: Any, ids: list[int], pixels: dict[str, Any] | None) -> torch.Tensor:
    kwargs: dict[str, Any] = {}
    if pixels is not None:
        kwargs = dict(pixel_values=pixels["pixel_values"], aspect_ratio_ids=pixels["aspect_ratio_ids"],
                      aspect_ratio_mask=pixels["aspect_ratio_mask"],
                      cross_attention_mask=cross_mask(ids, 300, int(pixels["aspect_ratio_mask"].sum())))
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), use_cache=False, **kwargs).logits[0].float()


def greedy(model: Any, ids: list[int], pixels: dict[str, Any] | None, n: int) -> list[int]:
    out = list(ids)
    for _ in range(n):
        out.append(int(forward(model, out, pixels)[-1].argmax()))
    return out[len(ids):]


def chat(tok: PreTrainedTokenizerFast, text: str, image: bool, before: str = "") -> list[int]:
    """Prompt ids; ``before`` puts text ahead of the image inside the user turn."""
    content = ([{"type": "text", "text": before}] if before else []) + \
        ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return list(tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False))


def generate(name: str, spec: dict[str, Any], seed: int) -> None:
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    ckpt = out / "checkpoint"
    ckpt.mkdir(parents=True)
    tok = build_tokenizer(ckpt)
    model = build_model(spec, tok, seed)
    model.to(spec["dtype"]).save_pretrained(ckpt, safe_serialization=True)  # stored narrow, exactly
    model.float()
    if spec["legacy_rope_keys"]:  # the spelling of Meta's published config.json
        cfg = json.loads((ckpt / "config.json").read_text())
        rope = cfg["text_config"].pop("rope_parameters")
        cfg["text_config"]["rope_theta"] = rope.pop("rope_theta")
        cfg["text_config"]["rope_scaling"] = rope
        (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))

    proc = MllamaImageProcessorPil(size={"height": TILE, "width": TILE}, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                   max_image_tiles=4, do_convert_rgb=True)
    ref: dict[str, np.ndarray] = {}
    pixels: dict[str, Any] = {}
    for img_name in spec["images"]:
        p = proc(images=[[fixture_image(img_name)]], return_tensors="pt")
        rows, cols = GRIDS[img_name]
        assert int(p["aspect_ratio_mask"].sum()) == rows * cols, img_name
        pixels[img_name] = p
        if name == "tiny":  # preprocessing does not depend on the model: stored once
            ref[f"pixels/{img_name}"] = p["pixel_values"][0, 0].numpy()
        ref[f"ar_id/{img_name}"] = p["aspect_ratio_ids"][0].numpy()
        ref[f"ar_mask/{img_name}"] = p["aspect_ratio_mask"][0, 0].numpy()
        with torch.no_grad():
            vis = model.model.vision_model(pixel_values=p["pixel_values"], aspect_ratio_ids=p["aspect_ratio_ids"],
                                           aspect_ratio_mask=p["aspect_ratio_mask"]).last_hidden_state
        ref[f"vision/{img_name}"] = vis[0, 0].numpy()

    cases: dict[str, Any] = {"logits": {}, "greedy": {}, "tokenizer": {}}
    prompts = {
        "text_only": (None, chat(tok, "What is the amount due on the invoice?", False)),
        "square": ("square", chat(tok, "Describe the chart.", True, before="Page one of the report.")),
        "wide": ("wide", chat(tok, "What is the date?", True)),
        "tall": ("tall", chat(tok, "Name the vendor.", True, before="A receipt")),
        "taller": ("taller", chat(tok, "Answer in JSON.", True)),
    }
    prompts = {k: v for k, v in prompts.items() if v[0] is None or v[0] in spec["images"]}
    for case, (img_name, ids) in prompts.items():
        logits = forward(model, ids, pixels[img_name] if img_name else None)
        ref[f"logits/{case}"] = logits.numpy()
        cases["logits"][case] = {"image": img_name, "ids": ids}
    # Meta's semantics: rows before the image equal a text-only run of those rows (up to float
    # rounding: torch's kernels block differently for other lengths, ~3e-6 on logits of ~15).
    img_name, ids = prompts["square"]
    cut = ids.index(300)
    gap = (forward(model, ids[:cut], None) - torch.from_numpy(ref["logits/square"][:cut])).abs().max()
    assert gap < 1e-4, gap
    for case in ("square", "text_only"):
        img_name, ids = prompts[case]
        cases["greedy"][case] = {"image": img_name, "ids": ids,
                                 "continuation": greedy(model, ids, pixels[img_name] if img_name else None, 32)}
    for text in ("The invoice total is due.", "What's the amount? 12,345.67 EUR\n\nAnswer:  ok\t\u00e9t\u00e9"):
        cases["tokenizer"][text] = tok.encode(text, add_special_tokens=False)
    np.savez_compressed(out / "reference.npz", **ref)
    (out / "cases.json").write_text(json.dumps(cases, indent=1))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e6:.2f} MB")


def main() -> None:
    apply_meta_semantics()
    for seed, (name, spec) in enumerate(SPECS.items()):
        generate(name, spec, seed)


if __name__ == "__main__":
    main()
