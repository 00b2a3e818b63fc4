"""Decode and prefill speed of the mllama engine vs llama-cpp-python on a llama model of the same text shape.

Both files are synthetic (random weights, the same Q4_K_M mix, same tensors per text layer),
loaded in the same process with the same threads, and measured in alternating rounds (the
median is reported: a shared machine is noisy). llama.cpp decodes through ``Llama.eval`` plus
an argmax, the engine through ``MllamaModel.generate`` (its sampler chain included). Also
reports where the engine's decode time goes: ggml compute, building graphs in Python, and
the rest of Python (inputs, sampling), and prefill of a --prompt-token prompt (an extraction
prompt with a schema is ~700 tokens). --no-repack keeps the engine's CPU weights out of ggml's
repack buffers (an experiment: ggml's tiled K-quant GEMM skips repacked weights).

    python -m benchmarks.mllama_cpu_speed --threads 1 --tokens 32 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import mllama_llamacpp as llamacpp_baseline
from benchmarks.mllama_synth import PRESETS, write_llama, write_mllama
from llamadoc.engines.mllama import ggml
from llamadoc.engines.mllama import model as model_module


class Probe:
    """Wall time inside ggml compute and graph building, counted only during one-token decode steps."""

    def __init__(self) -> None:
        self.compute = self.build = 0.0
        self._decoding = False
        self._real = (ggml.lib.backend_sched_graph_compute, model_module.build_decoder,
                      model_module.MllamaModel._forward)

    def _timed(self, fn: Callable[..., Any], attr: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self._decoding:
                    setattr(self, attr, getattr(self, attr) + time.perf_counter() - t)
        return timed

    def __enter__(self) -> Probe:
        compute, build, forward = self._real

        def watch(model: Any, seqs: Any, new: list[list[int]], all_rows: bool = False) -> Any:
            self._decoding = len(new[0]) == 1
            return forward(model, seqs, new, all_rows)

        ggml.lib.backend_sched_graph_compute = self._timed(compute, "compute")
        model_module.build_decoder = self._timed(build, "build")
        model_module.MllamaModel._forward = watch  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        ggml.lib.backend_sched_graph_compute, model_module.build_decoder, model_module.MllamaModel._forward = \
            self._real  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-mid", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", type=int, default=700, help="prefill: prompt tokens")
    ap.add_argument("--quant", default="Q4_K_M", choices=("Q4_K_M", "Q8_0"))
    ap.add_argument("--no-repack", action="store_true", help="engine weights outside the CPU repack buffers")
    ap.add_argument("--no-extra-bufts", action="store_true",
                    help="llama-cpp-python without ggml's extra buffer types (AMX, repack): where its AMX kernels "
                         "crash (benchmarks/mllama_llamacpp.py)")
    ap.add_argument("--dir", type=Path, default=None, help="keep the GGUF files here (default: a temp dir)")
    args = ap.parse_args()
    import llama_cpp

    shape = PRESETS[args.preset]
    work = args.dir or Path(tempfile.mkdtemp(prefix="mllama-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ml, ll = work / f"mllama-{args.preset}-{args.quant}.gguf", work / f"llama-{args.preset}-{args.quant}.gguf"
    if not ml.exists():
        write_mllama(ml, shape, quant=args.quant)
    if not ll.exists():
        write_llama(ll, shape, quant=args.quant)
    if args.no_repack:
        model_module.cpu_repack_buffer_type = lambda cpu: None  # type: ignore[assignment]
    prompt = [128000] + list(range(1000, 1032))
    image = Image.fromarray((np.random.default_rng(0).random((900, 700, 3)) * 255).astype(np.uint8))

    n_ctx = args.prompt + args.tokens + 64
    llm = llamacpp_baseline.load(ll, args.threads, gpu=False, n_ctx=n_ctx, extra_bufts=not args.no_extra_bufts)
    engine = model_module.MllamaModel.load(ml, threads=args.threads, n_ctx=n_ctx)
    long = [128000] + [1000 + i % 5000 for i in range(args.prompt - 1)]
    ids_image = [128000, engine.tokenizer.image] + prompt[1:]
    engine.generate(image, ids_image, max_tokens=2, stop=())  # encodes and caches the image

    def llama_round() -> float:
        llm.reset()
        llm.eval(prompt)
        return llamacpp_baseline.greedy_decode(llm, args.tokens)

    def engine_round(with_image: bool, probe: Probe) -> float:
        out = engine.generate(image if with_image else None, ids_image if with_image else prompt,
                              max_tokens=args.tokens + 1, stop=())
        return out.timings_ms["decode_steps"] / out.timings_ms["decode"] * 1e3

    def llama_prefill() -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(long)
        return len(long) / (time.perf_counter() - t)

    def engine_prefill(with_image: bool) -> float:
        ids = [128000, engine.tokenizer.image] + long[2:] if with_image else long
        out = engine.generate(image if with_image else None, ids, max_tokens=1, stop=())
        return len(ids) / out.timings_ms["prefill"] * 1e3

    prefill: dict[str, list[float]] = {"llama": [], "image": [], "text": []}
    rates: dict[str, list[float]] = {"llama": [], "image": [], "text": []}
    probes = {"image": Probe(), "text": Probe()}
    decode_time = {"image": 0.0, "text": 0.0}
    for _ in range(args.rounds):
        rates["llama"].append(llama_round())
        for kind in ("image", "text"):
            with probes[kind] as p:
                r = engine_round(kind == "image", p)
            rates[kind].append(r)
            decode_time[kind] += args.tokens / r
        prefill["llama"].append(llama_prefill())
        prefill["image"].append(engine_prefill(True))
        prefill["text"].append(engine_prefill(False))
    llm.close()
    engine.close()

    base = statistics.median(rates["llama"])
    t = shape.text
    print(f"command: python -m benchmarks.mllama_cpu_speed --preset {args.preset} --threads {args.threads} "
          f"--tokens {args.tokens} --rounds {args.rounds} --prompt {args.prompt} --quant {args.quant}"
          f"{' --no-repack' if args.no_repack else ''}{' --no-extra-bufts' if args.no_extra_bufts else ''}")
    print(f"machine: {platform.machine()} {os.cpu_count()} cores ({platform.processor() or 'cpu'}), "
          f"threads {args.threads}, llama-cpp-python {llama_cpp.__version__}")
    print(f"shape: {args.preset}: {t.n_layer} text layers ({len(t.cross_layers)} cross), width {t.n_embd}, "
          f"ffn {t.n_ff}, vocab {t.n_vocab}, {args.quant}; image keys per cross layer {shape.vision.n_tokens}")
    print(f"{'decode, median of ' + str(args.rounds) + ' rounds':<36}{'tok/s':>8}{'vs llama.cpp':>14}"
          f"{'ggml':>8}{'graphs':>8}{'python':>8}")
    print(f"{'llama-cpp-python, llama same shape':<36}{base:>8.2f}{1.0:>14.2f}")
    for kind, label in (("image", "mllama engine, with a page image"), ("text", "mllama engine, text only")):
        rate, p, total = statistics.median(rates[kind]), probes[kind], decode_time[kind]
        rest = total - p.compute - p.build
        print(f"{label:<36}{rate:>8.2f}{rate / base:>14.2f}{p.compute / total:>8.1%}{p.build / total:>8.1%}"
              f"{rest / total:>8.1%}")
    print(f"(all rounds, tok/s: llama.cpp {[round(x, 1) for x in rates['llama']]}, "
          f"image {[round(x, 1) for x in rates['image']]}, text {[round(x, 1) for x in rates['text']]})")
    base = statistics.median(prefill["llama"])
    print(f"{'prefill ' + str(args.prompt) + ' tokens, median':<36}{'tok/s':>8}{'vs llama.cpp':>14}")
    for kind, label in (("llama", "llama-cpp-python, llama same shape"), ("image", "mllama engine, with a page image"),
                        ("text", "mllama engine, text only")):
        rate = statistics.median(prefill[kind])
        print(f"{label:<36}{rate:>8.1f}{rate / base:>14.2f}   rounds {[round(x) for x in prefill[kind]]}")


if __name__ == "__main__":
    main()
