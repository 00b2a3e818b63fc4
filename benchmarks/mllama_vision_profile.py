"""Where the mllama vision encoder's time goes: every node of its ggml graph timed on the CPU.

ggml's scheduler can stop after any node and call back (``ggml_backend_sched_set_eval_callback``,
the hook llama.cpp's ``eval-callback`` tool uses): asked for every node, it computes the graph
one node at a time, and the time between two calls is that node's. Nodes are grouped by what
they do, from their op and the weights they read. Works on any checkout of the engine (run it
with that checkout's PYTHONPATH), so the starting commit profiles the same way.

    python -m benchmarks.mllama_vision_profile --preset cpu-page --quant Q8_0 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.mllama_synth import PRESETS, write_mllama
from llamadoc.engines.mllama import ggml
from llamadoc.engines.mllama.model import MllamaModel

EvalCallback = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)


def _base_lib() -> ctypes.CDLL:
    """libggml-base as the engine loaded it (same path: dlopen hands back the same library)."""
    path = Path(ggml._library_dir()) / "libggml-base.so.0"
    lib = ctypes.CDLL(str(path))
    lib.ggml_backend_sched_set_eval_callback.argtypes = [ctypes.c_void_p, EvalCallback, ctypes.c_void_p]
    lib.ggml_backend_sched_set_eval_callback.restype = None
    return lib


def _weight(t: int) -> str:
    """The name of the tensor a view/reshape chain starts from ("" for an unnamed activation)."""
    while t:
        s = ggml.tensor(t)
        name = s.name.decode(errors="replace").split(" ")[0]
        if name.startswith(("v.", "mm.", "blk.")):
            return name
        t = s.view_src or (s.src[0] if ggml.lib.op_desc(t) in (b"RESHAPE", b"VIEW", b"PERMUTE", b"TRANSPOSE")
                           else 0)
    return ""


def describe(t: int) -> tuple[str, str]:
    """A node's op and the first weight it reads ("" for none), read while its graph is alive."""
    return ggml.lib.op_desc(t).decode(), next((n for n in (_weight(x) for x in ggml.tensor(t).src[:3] if x) if n), "")


def category(op: str, w: str, stage: str) -> str:
    """What a node does. ``stage`` is "embed" before the first encoder layer, "layers", "tail" after."""
    if op == "MUL_MAT":
        if "patch_embd" in w:
            return "patch embedding (im2col + matmul)"
        if w.startswith("mm."):
            return "projector 7680 -> text width"
        if "cross_attn" in w:
            return "cross-attention K/V of the text layers"
        if any(k in w for k in ("attn_q", "attn_k", "attn_v", "attn_output")):
            return "attention: q, k, v, o projections"
        if "ffn_" in w:
            return "MLP: fc1, fc2 matmuls"
        return "attention: scores and weighted sum"
    if op == "IM2COL":
        return "patch embedding (im2col + matmul)"
    if "tile_position" in w or "position_embd" in w or "class_embd" in w:
        return "tile / position embeddings, class token"
    if op in ("FLASH_ATTN_EXT", "SOFT_MAX"):
        return "attention: scores and weighted sum" if op == "SOFT_MAX" else "attention: flash attention"
    if op == "NORM" or any(k in w for k in ("_norm.", "pre_ln", "post_ln")):
        return "layer norms" if "cross_attn" not in w else "cross-attention K/V of the text layers"
    if op in ("GELU", "GELU_ERF", "UNARY", "GLU") or "ffn_" in w:
        return "MLP: GELU and biases"
    if op == "RMS_NORM" or (op == "CPY" and stage == "tail"):
        return "cross-attention K/V of the text layers"
    if stage == "embed":
        return "tile / position embeddings, class token"
    if stage == "tail":
        return "intermediate states: concat, unpad"
    if op in ("CONT", "CPY", "PERMUTE", "TRANSPOSE", "CONCAT"):
        return "attention: layout copies (cont, cpy, concat)"
    if op in ("ADD", "SCALE"):
        return "residual adds, gates"
    return f"other ({op})"


def page(side: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8))


def profile(model: MllamaModel, image: Image.Image, clock: Callable[[], float]) -> tuple[dict[str, float],
                                                                                  dict[str, int], float]:
    """ms and node count per category for one encode, and the instrumented total in ms."""
    lib = _base_lib()
    nodes: list[tuple[tuple[str, str], float]] = []  # ((op, weight read), ms) in compute order
    last = [0.0]

    def observe(t: int, ask: bool, _user: int) -> bool:
        if not ask:
            now = clock()
            nodes.append((describe(t), (now - last[0]) * 1e3))
            last[0] = clock()
        return True

    cb = EvalCallback(observe)
    lib.ggml_backend_sched_set_eval_callback(model.runtime.sched, cb, None)
    real = model.runtime.compute

    def compute(graph: int, inputs: dict[int, np.ndarray]) -> None:
        last[0] = clock()
        real(graph, inputs)

    try:
        model.runtime.compute = compute  # type: ignore[method-assign]
        t = clock()
        model.encode_image(image)
        total = (clock() - t) * 1e3
        # Stages from the weights each node reads: before the first encoder layer, after the last.
        layer_nodes = [i for i, ((_, w), _) in enumerate(nodes) if ".blk." in w]
        times: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for i, ((op, w), ms) in enumerate(nodes):
            stage = "embed" if i < layer_nodes[0] else "tail" if i > layer_nodes[-1] else "layers"
            c = category(op, w, stage)
            times[c] += ms
            counts[c] += 1
    finally:
        model.runtime.compute = real  # type: ignore[method-assign]
        lib.ggml_backend_sched_set_eval_callback(model.runtime.sched, EvalCallback(), None)
    return dict(times), dict(counts), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-page", choices=sorted(PRESETS))
    ap.add_argument("--quant", default="Q8_0", choices=("Q8_0", "F16", "Q4_K_M"))
    ap.add_argument("--threads", type=int, default=1,
                    help="1 (default): node times are CPU time of the one computing thread, which other "
                         "work on a shared machine does not inflate; more: wall time")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"), help="where the GGUF goes")
    args = ap.parse_args()
    shape = PRESETS[args.preset]
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"mllama-{args.preset}-{args.quant}.gguf"
    if not path.exists():
        write_mllama(path, shape, quant=args.quant)
    model = MllamaModel.load(path, threads=args.threads, n_ctx=256, image_cache=2)
    side = 2 * shape.vision.image_size
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    t = clock()
    model.encode_image(page(side, 1))  # warm-up: pages the weights in, sizes the buffers
    plain = (clock() - t) * 1e3
    times, counts, wall = profile(model, page(side, 2), clock)
    compute = model.runtime.compute_buffer_bytes()
    model.close()
    total = sum(times.values())
    print(f"command: python -m benchmarks.mllama_vision_profile --preset {args.preset} --quant {args.quant} "
          f"--threads {args.threads}")
    what = "CPU time of the computing thread" if args.threads == 1 else "wall time"
    print(f"{what}: uninstrumented encode {plain:.0f} ms; instrumented {wall:.0f} ms, of which nodes {total:.0f} ms; "
          f"compute buffer {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in compute.items())}")
    print(f"{'part of the vision graph':<44}{'ms':>9}{'share':>8}{'nodes':>7}")
    for c, ms in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"{c:<44}{ms:>9.0f}{ms / total:>8.1%}{counts[c]:>7}")


if __name__ == "__main__":
    main()
