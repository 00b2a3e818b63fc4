"""GPU check of the mllama engine: a full-size Llama 3.2 11B Vision shape with all layers on the GPU.

Writes two synthetic Q4_K_M-style GGUFs (random weights, real shapes): the 11B mllama for our
engine and a same-shape Llama 3.1 8B (its 32 self-attention layers) for llama-cpp-python, then
measures, in one run: vision encode ms per 4-tile page, prefill and decode tokens/s, pages/s for
a 300-token extraction with batching across pages (batch 1, 4, 8, 16), and llama-cpp-python's
decode tokens/s on the 8B. ``--tiny`` runs the same code paths on a tiny shape on the CPU.

    python -m benchmarks.gpu_check --tiny            # tiny shape on the CPU: seconds, any machine
    python -m benchmarks.gpu_check --shape tiny      # tiny shape on the GPU: a smoke test
    bash benchmarks/gpu_check.sh                     # on the GPU machine: both, then the 11B
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.mllama_llamacpp import prefill_and_decode
from benchmarks.mllama_synth import (
    LLAMA_3_2_11B,
    TINY,
    Shape,
    write_llama,
    write_mllama,
)
from llamadoc.engines.mllama.backend import describe_backends
from llamadoc.engines.mllama.model import BatchItem, MllamaModel

EXTRACT_PROMPT = ("Extract the invoice number, date, vendor, currency, every line item (description, "
                  "quantity, unit price, amount) and the totals as JSON.")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def page(shape: Shape, seed: int) -> Image.Image:
    """A random page that fills a 2x2 tile canvas (4 tiles): the worst case per page."""
    side = 2 * shape.vision.image_size
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8))


def engine_run(path: Path, shape: Shape, batches: list[int], n_extract: int, n_prompt: int,
               n_decode: int, gpu: bool, threads: int) -> dict[str, Any]:
    t = time.perf_counter()
    n_ctx = max(n_prompt, len(EXTRACT_PROMPT) + 64) + max(n_decode, n_extract) + 64
    model = MllamaModel.load(path, n_gpu_layers=-1 if gpu else 0, n_ctx=n_ctx, image_cache=4, threads=threads)
    out: dict[str, Any] = {"load_s": time.perf_counter() - t, "device": model.device,
                           "gpu_layers": model.gpu_layers, "memory": model.memory.summary()}
    log(f"engine loaded in {out['load_s']:.1f} s on {model.device}; {out['memory']}")
    tok = model.tokenizer

    times = []
    for seed in range(4):  # distinct pages: every one runs the encoder
        t = time.perf_counter()
        model.encode_image(page(shape, 1000 + seed))
        times.append((time.perf_counter() - t) * 1e3)
    out["vision_ms_per_page"] = statistics.median(times[1:])  # the first includes warm-up
    out["vision_ms_first"] = times[0]
    out["vision_compute_MiB"] = {k: v / 2**20 for k, v in model.runtime.compute_buffer_bytes().items()}
    log(f"vision encode ms per 4-tile page: {[round(x, 1) for x in times]}; compute buffers "
        + ", ".join(f"{k} {v:.0f} MiB" for k, v in out["vision_compute_MiB"].items()))

    img = page(shape, 1000)  # cached now
    prompt = [tok.bos, tok.image] + [1000 + i % 5000 for i in range(n_prompt - 2)]
    model.generate(img, prompt[:16], max_tokens=2, stop=())  # warm-up of the prefill/decode graphs
    c = model.generate(img, prompt, max_tokens=n_decode + 1, stop=())
    out["prefill_tok_s"] = len(prompt) / (c.timings_ms["prefill"] / 1e3)
    out["decode_tok_s"] = c.timings_ms["decode_steps"] / (c.timings_ms["decode"] / 1e3)
    log(f"prefill {out['prefill_tok_s']:.0f} tok/s ({len(prompt)} tokens), decode {out['decode_tok_s']:.1f} tok/s")

    extract = tok.chat(EXTRACT_PROMPT, image=True)
    out["batches"] = {}
    for b in batches:
        pages = [page(shape, 10_000 * b + i) for i in range(b)]  # fresh pages: vision included
        t = time.perf_counter()
        res = model.generate_batch([BatchItem(p, extract, max_tokens=n_extract) for p in pages], stop=())
        total = time.perf_counter() - t
        tm = res[0].timings_ms
        row = {"pages_s": b / total, "seconds": total, "vision_s": tm["vision"] / 1e3,
               "prefill_s": tm["prefill"] / 1e3, "decode_s": tm["decode"] / 1e3,
               "decode_tok_s": b * tm["decode_steps"] / (tm["decode"] / 1e3)}
        assert all(len(r.tokens) == n_extract for r in res)
        out["batches"][b] = row
        log(f"batch {b:>2}: {row['pages_s']:.2f} pages/s ({total:.1f} s: vision {row['vision_s']:.1f}, "
            f"prefill {row['prefill_s']:.1f}, decode {row['decode_s']:.1f}; {row['decode_tok_s']:.0f} tok/s)")
    model.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny shape on the CPU: checks every code path in seconds")
    ap.add_argument("--shape", choices=("11b", "tiny"), default="11b")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --tiny, else all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/llamadoc-gpu-check"), help="where the GGUFs go")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="results JSON folder")
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--extract-tokens", type=int, default=300)
    args = ap.parse_args()
    name = "tiny" if args.tiny else args.shape
    shape = TINY if name == "tiny" else LLAMA_3_2_11B
    # Llama 3.1 8B: the 11B's text model without its 8 cross-attention layers.
    text = replace(shape.text, n_layer=shape.text.n_layer - len(shape.text.cross_layers), cross_layers=())
    llama_shape = replace(shape, text=text)
    gpu = not args.tiny
    devices = describe_backends()
    log(f"python {platform.python_version()}, devices: " + "; ".join(
        f"{d['name']} ({d['description']}, {d['memory_free'] / 2**30:.1f}/{d['memory_total'] / 2**30:.1f} GiB)"
        for d in devices))
    if gpu and not any(d["kind"] in ("GPU", "IGPU") for d in devices):
        sys.exit("no GPU backend in this llama-cpp-python build (install the CUDA wheel)")

    args.work.mkdir(parents=True, exist_ok=True)
    ml, ll = args.work / f"mllama-{name}.gguf", args.work / f"llama-{name}-text.gguf"
    t = time.perf_counter()
    if not ml.exists():
        write_mllama(ml, shape)
    if not ll.exists():
        write_llama(ll, llama_shape)
    log(f"synthetic files: {ml.stat().st_size / 1e9:.2f} GB + {ll.stat().st_size / 1e9:.2f} GB "
        f"in {time.perf_counter() - t:.0f} s")

    n_prompt, n_decode = 512, 128
    threads = args.threads or (1 if args.tiny else os.cpu_count() or 1)
    base = prefill_and_decode(ll, [128000] + [1000 + i % 5000 for i in range(n_prompt - 1)], n_decode, gpu, threads)
    label = "Llama 3.1 8B" if name == "11b" else "tiny"
    log(f"llama-cpp-python ({label} shape): prefill {base['prefill_tok_s']:.0f} tok/s, "
        f"decode {base['decode_tok_s']:.1f} tok/s")
    eng = engine_run(ml, shape, [int(b) for b in args.batches.split(",")], args.extract_tokens, n_prompt, n_decode,
                     gpu, threads)

    results = {"shape": name, "devices": devices, "llama_cpp": base, "engine": eng}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_check_{name}.json").write_text(json.dumps(results, indent=2, default=str))
    print()
    print(f"mllama engine, {'Llama 3.2 11B Vision' if name == '11b' else 'tiny'} shape, Q4_K_M mix, "
          f"{eng['device']}, {eng['gpu_layers']} layers offloaded")
    print(f"  vision encode, 4-tile page      {eng['vision_ms_per_page']:9.1f} ms   (target <= 100 on an H100)")
    print(f"  prefill ({n_prompt} tokens, image)   {eng['prefill_tok_s']:9.0f} tok/s")
    print(f"  decode, one page                {eng['decode_tok_s']:9.1f} tok/s "
          f"({eng['decode_tok_s'] / base['decode_tok_s']:.2f}x llama.cpp; target >= 0.8)")
    print(f"  llama-cpp-python decode         {base['decode_tok_s']:9.1f} tok/s (prefill {base['prefill_tok_s']:.0f}; "
          f"{'Llama 3.1 8B' if name == '11b' else 'tiny'} shape)")
    for b, row in eng["batches"].items():
        print(f"  {args.extract_tokens}-token extraction, batch {b:>2}  {row['pages_s']:7.2f} pages/s "
              f"({row['decode_tok_s']:.0f} tok/s decode)")
    print("  (target: >= 2 pages/s for invoice extraction with batching)")


if __name__ == "__main__":
    main()
