"""Vision encode of a 4-tile page on the CPU, side by side in one run: this checkout's mllama engine,
the engine at another commit, transformers in fp32 on the same checkpoint, and libmtmd (llama.cpp's
own ViT) on a synthetic projector of the same width, depth and token count.

Each contender runs in its own process (its own PYTHONPATH or interpreter), loaded once; rounds
are interleaved (one page each, the same fresh page for all in a round) so a shared machine's
noise falls on all of them alike. Figures are wall times of encoding a page: preprocessing
included, the cross-attention K/V of the text layers included where the model computes them per
image (the engine; transformers' k/v projections are timed with it).

    python -m benchmarks.mllama_vision_speed --base ../base --python-hf ../venv-bench/bin/python

(../base: a checkout of the commit to compare with; ../venv-bench: a venv with torch and transformers.)

Files (synthetic, random weights) go to --dir: the mid shape ("cpu-page": 16 text layers, the real
vision width and 6,432 tokens, 8 + 2 vision layers, Q8_0) for the engine at both commits; a
Hugging Face checkpoint with the same vision tower and a 2-layer text model, saved by
transformers and converted by this checkout's converter to Q8_0, for the engine vs transformers.
transformers and torch are needed only by their worker (--python-hf: an interpreter that has them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
TILE = 560


def page(seed: int) -> Image.Image:
    """A random page that fills a 2x2 canvas of 560-pixel tiles: four tiles, 6,404 image tokens."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((2 * TILE, 2 * TILE, 3)) * 255).astype(np.uint8))


# ---- workers: one process each, "seed" lines in, one JSON line out per page -------------------------

def _serve(encode: Any, info: Any) -> None:
    encode(page(999))  # warm-up: pages the weights in, sizes buffers
    print(json.dumps(info()), flush=True)
    for line in sys.stdin:
        img = page(int(line))
        t, c = time.perf_counter(), time.process_time()
        encode(img)
        print(json.dumps({"wall_ms": (time.perf_counter() - t) * 1e3, "cpu_ms": (time.process_time() - c) * 1e3}),
              flush=True)


def worker_engine(path: str, threads: int) -> None:
    from llamadoc.engines.mllama.model import MllamaModel

    model = MllamaModel.load(path, threads=threads, n_ctx=256, image_cache=2)
    _serve(model.encode_image, lambda: {
        "compute_MiB": {k: round(v / 2**20) for k, v in model.runtime.compute_buffer_bytes().items()},
        "memory": model.memory.summary()})


def worker_transformers(ckpt: str, threads: int) -> None:
    import torch
    from transformers import MllamaForConditionalGeneration, MllamaImageProcessorPil

    torch.set_num_threads(threads)
    model = MllamaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    proc = MllamaImageProcessorPil.from_pretrained(ckpt)

    @torch.inference_mode()
    def encode(img: Image.Image) -> None:
        x = proc(images=[[img]], return_tensors="pt")
        out = model.model.vision_model(pixel_values=x["pixel_values"], aspect_ratio_ids=x["aspect_ratio_ids"],
                                       aspect_ratio_mask=x["aspect_ratio_mask"])
        states = model.model.multi_modal_projector(out.last_hidden_state)
        for layer in model.config.text_config.cross_attention_layers:  # what the engine caches per image
            attn = model.model.language_model.layers[layer].cross_attn
            attn.k_norm(attn.k_proj(states).view(*states.shape[:-1], -1, attn.head_dim))
            attn.v_proj(states)

    _serve(encode, lambda: {"torch": torch.__version__, "threads": torch.get_num_threads()})


def worker_mtmd(mmproj: str, text_model: str, threads: int) -> None:
    import ctypes

    import llama_cpp
    from llama_cpp import mtmd_cpp as mt

    from llamadoc.engines.mllama.tokenizer import quiet_llama

    with quiet_llama():
        llm = llama_cpp.Llama(model_path=text_model, n_ctx=512, verbose=False, n_threads=threads)
        params = mt.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, threads, False, True
        ctx = mt.mtmd_init_from_file(mmproj.encode(), llm.model, params)
    if not ctx:
        sys.exit("libmtmd could not load the projector")
    marker = mt.mtmd_default_marker()

    def encode(img: Image.Image) -> None:
        data = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
        bitmap = mt.mtmd_bitmap_init(img.width, img.height, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        chunks = mt.mtmd_input_chunks_init()
        text = mt.mtmd_input_text(marker, len(marker), False, True)
        bitmaps = (mt.mtmd_bitmap_p_ctypes * 1)(bitmap)
        try:
            if mt.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) != 0:
                sys.exit("mtmd_tokenize failed")
            for i in range(mt.mtmd_input_chunks_size(chunks)):
                chunk = mt.mtmd_input_chunks_get(chunks, i)
                if mt.mtmd_input_chunk_get_type(chunk) == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    if mt.mtmd_encode_chunk(ctx, chunk) != 0:
                        sys.exit("mtmd_encode_chunk failed")
                    encode.tokens = mt.mtmd_input_chunk_get_n_tokens(chunk)  # type: ignore[attr-defined]
        finally:
            mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)

    _serve(encode, lambda: {"image_tokens": encode.tokens})  # type: ignore[attr-defined]


# ---- files ------------------------------------------------------------------------------------------

def write_clip(path: Path, text_width: int, layers: int) -> None:
    """A LLaVA-style CLIP projector with the mllama tower's width and head count and 6,400 tokens
    (1120-pixel images, patch 14): llama.cpp's own ViT graph on the same work, F16 as mmproj files are."""
    import gguf

    e, ff, patch, size = 1280, 5120, 14, 2 * TILE
    rng = np.random.default_rng(0)

    def rand(*shape: int, dtype: Any = np.float16) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(dtype)

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", "mlp")
    for key, value in (("embedding_length", e), ("feed_forward_length", ff), ("block_count", layers),
                       ("attention.head_count", 16), ("projection_dim", text_width), ("image_size", size),
                       ("patch_size", patch)):
        w.add_uint32(f"clip.vision.{key}", value)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    w.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    w.add_bool("clip.use_gelu", True)
    w.add_tensor("v.patch_embd.weight", rand(e, 3, patch, patch))
    w.add_tensor("v.class_embd", rand(e, dtype=np.float32))
    w.add_tensor("v.position_embd.weight", rand((size // patch) ** 2 + 1, e, dtype=np.float32))
    for n in ("pre_ln", "post_ln"):
        w.add_tensor(f"v.{n}.weight", np.ones(e, np.float32))
        w.add_tensor(f"v.{n}.bias", np.zeros(e, np.float32))
    for i in range(layers):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            w.add_tensor(p + name + ".weight", rand(e, e))
            w.add_tensor(p + name + ".bias", rand(e, dtype=np.float32))
        for name in ("ln1", "ln2"):
            w.add_tensor(p + name + ".weight", np.ones(e, np.float32))
            w.add_tensor(p + name + ".bias", np.zeros(e, np.float32))
        w.add_tensor(p + "ffn_up.weight", rand(ff, e))
        w.add_tensor(p + "ffn_up.bias", rand(ff, dtype=np.float32))
        w.add_tensor(p + "ffn_down.weight", rand(e, ff))
        w.add_tensor(p + "ffn_down.bias", rand(e, dtype=np.float32))
    w.add_tensor("mm.0.weight", rand(text_width, e))
    w.add_tensor("mm.0.bias", rand(text_width, dtype=np.float32))
    w.add_tensor("mm.2.weight", rand(text_width, text_width))
    w.add_tensor("mm.2.bias", rand(text_width, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


HF_CHECKPOINT = """
import sys
from pathlib import Path
import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor
from tools.mllama_reference import CLIP_MEAN, CLIP_STD, build_tokenizer
out = Path(sys.argv[1])
tok = build_tokenizer(out)
torch.manual_seed(0)
v = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=8, num_global_layers=2, attention_heads=16,
         intermediate_layers_indices=[0, 1, 3, 5, 7], image_size=560, patch_size=14, max_num_tiles=4, norm_eps=1e-5,
         vision_output_dim=7680)
t = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=4,
         cross_attention_layers=[1], vocab_size=300, rms_norm_eps=1e-5, max_position_embeddings=131072,
         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
model = MllamaForConditionalGeneration(MllamaConfig(vision_config=v, text_config=t, image_token_index=300)).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "gate" in name and p.numel() == 1:
            p.fill_(0.5)  # fresh models have every gate at zero
model.save_pretrained(out)
MllamaImageProcessor(size={"height": 560, "width": 560}, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                     max_image_tiles=4).save_pretrained(out)
"""


def prepare(work: Path, python_hf: str | None, layers: int) -> dict[str, Path]:
    from benchmarks.mllama_synth import CPU_PAGE, write_mllama
    from llamadoc.engines.mllama.convert import convert
    from tests.tinymodels import write_text_model

    work.mkdir(parents=True, exist_ok=True)
    f = {"page": work / "mllama-cpu-page-Q8_0.gguf", "clip": work / "clip-vit-1280x10-6400.gguf",
         "clip_text": work / "clip-text-64.gguf", "hf": work / "hf-page", "hf_gguf": work / "hf-page-Q8_0.gguf"}
    if not f["page"].exists():
        write_mllama(f["page"], CPU_PAGE, quant="Q8_0")
    if not f["clip"].exists():
        write_clip(f["clip"], 64, layers)
    if not f["clip_text"].exists():
        write_text_model(f["clip_text"])
    if python_hf and not (f["hf"] / "config.json").exists():
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([python_hf, "-c", HF_CHECKPOINT, str(f["hf"])], check=True, cwd=REPO, env=env)
    if python_hf and not f["hf_gguf"].exists():
        convert(f["hf"], f["hf_gguf"], "Q8_0")
    return f


# ---- the run ----------------------------------------------------------------------------------------

class Contender:
    def __init__(self, label: str, cmd: list[str], pythonpath: Path, log: Path) -> None:
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "GGML_NO_BACKTRACE": "1"}
        with open(log, "w") as err:  # libraries' chatter (libmtmd's clip log says if it used flash attention)
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         cwd=REPO, env=env)
        self.info = self._read()
        self.rounds: list[dict[str, float]] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker died (exit {self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def encode(self, seed: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        self.rounds.append(self._read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()

    def median(self) -> float:
        return statistics.median(r["wall_ms"] for r in self.rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="a checkout of the engine to compare with (e.g. the starting commit)")
    ap.add_argument("--python-hf", help="a Python with torch and transformers: adds the transformers contender")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"))
    ap.add_argument("--q4", action="store_true", help="add the engine on the cpu-page shape's Q4_K_M file")
    ap.add_argument("--no-mtmd", action="store_true", help="leave libmtmd out")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: ratios of the workers' CPU time (with --threads 1, what a shared machine's other "
                         "work does not inflate)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--file", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        {"engine": lambda: worker_engine(args.file[0], args.threads),
         "transformers": lambda: worker_transformers(args.file[0], args.threads),
         "mtmd": lambda: worker_mtmd(args.file[0], args.file[1], args.threads)}[args.worker]()
        return

    files = prepare(args.dir, args.python_hf, layers=10)

    def worker(kind: str, *paths: Path, python: str = sys.executable) -> list[str]:
        return [python, str(HERE), "--worker", kind, "--threads", str(args.threads), "--file", *map(str, paths)]

    specs: list[tuple[str, list[str], Path]] = []
    if args.base:
        specs.append(("engine at --base, mid shape", worker("engine", files["page"]), args.base.resolve()))
    specs.append(("engine (this checkout), mid shape", worker("engine", files["page"]), REPO))
    if args.q4:
        q4 = args.dir / "mllama-cpu-page-Q4_K_M.gguf"
        if not q4.exists():
            from benchmarks.mllama_synth import CPU_PAGE, write_mllama
            write_mllama(q4, CPU_PAGE, quant="Q4_K_M")
        specs.append(("engine (this checkout), mid shape Q4_K_M", worker("engine", q4), REPO))
    if args.python_hf:
        specs.append(("engine (this checkout), HF checkpoint Q8_0", worker("engine", files["hf_gguf"]), REPO))
        specs.append(("transformers fp32, HF checkpoint", worker("transformers", files["hf"], python=args.python_hf),
                      REPO))
    if not args.no_mtmd:
        specs.append(("libmtmd, CLIP ViT 1280 x 10 layers, F16", worker("mtmd", files["clip"], files["clip_text"]),
                      REPO))
    contenders = []
    for i, (label, cmd, root) in enumerate(specs):  # loaded one after another, not competing
        contenders.append(Contender(label, cmd, root, args.dir / f"worker-{i}.log"))
    for r in range(args.rounds):
        for c in contenders:
            c.encode(1000 + r)
    for c in contenders:
        c.close()

    import llama_cpp

    print(f"command: python -m benchmarks.mllama_vision_speed{' --base BASE' if args.base else ''}"
          f"{' --python-hf VENV/bin/python' if args.python_hf else ''} --threads {args.threads} "
          f"--rounds {args.rounds}{' --q4' if args.q4 else ''}{' --no-mtmd' if args.no_mtmd else ''}"
          f"{' --clock cpu' if args.clock == 'cpu' else ''}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, "
          f"llama-cpp-python {llama_cpp.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    key = "cpu_ms" if args.clock == "cpu" else "wall_ms"
    # them/us: the median of per-round ratios against this checkout's engine on each of its files
    peers = [c for c in contenders if c.label.startswith("engine (this checkout)")]
    print(f"{'4-tile page, median of ' + str(args.rounds) + ' rounds, ' + key[:-3] + ' ms':<48}{'ms':>9}"
          + "".join(f"{'them/us (' + p.label.split(', ')[1].split()[0] + ')':>18}" for p in peers) + f"{'cpu use':>9}")
    for c in contenders:
        ratios = "".join(
            f"{statistics.median(a[key] / b[key] for a, b in zip(c.rounds, p.rounds, strict=True)):>18.2f}"
            for p in peers)
        use = statistics.median(r["cpu_ms"] / (r["wall_ms"] * args.threads) for r in c.rounds)
        print(f"{c.label:<48}{statistics.median(r[key] for r in c.rounds):>9.0f}{ratios}{use:>9.0%}")
    for c in contenders:
        print(f"  {c.label}: rounds {[round(r[key]) for r in c.rounds]} ms; {c.info}")


if __name__ == "__main__":
    main()
