"""MllamaModel: load an mllama GGUF onto ggml backends and run it: logits, generation, batched generation.

Images are encoded once into cross-attention K/V and kept in a small cache keyed by the image's
hash, so several prompts about one page pay for the vision encoder once.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image

from llamadoc.engines import llamacpp
from llamadoc.errors import ContextFull, PageError, UsageError

from . import ggml
from .backend import (
    Device,
    Runtime,
    cpu_device,
    cpu_repack_buffer_type,
    flash_attention_supported,
    pick_gpu,
    repack_supports,
)
from .cache import CrossCache, SelfCache, pad_keys
from .ggml import lib
from .gguf_io import GGUFFile
from .graph import Graph, mask_rows
from .loader import (
    MATMUL,
    Expected,
    MllamaConfig,
    Weights,
    cast_weights,
    check_tensors,
    cross_norm_fixes,
    image_only_weights,
    load_weights,
    placement,
    split_projector,
)
from .memory import HEADROOM, MemoryEstimate, estimate_memory
from .preprocess import Preprocessed, open_image, preprocess
from .sampling import Sampler
from .text import Shape, build_decoder
from .tokenizer import Tokenizer
from .vision import VisionEncoder

DEFAULT_CTX = 4096


def tiled_gemm_types() -> frozenset[int]:
    """The weight types ggml's tiled GEMM multiplies with many rows on this CPU: K-quants on x86
    (AVX2 and up), unless GGML_CPU_TILED_MM=0 turns it off. It skips repacked weights."""
    if not lib.cpu_has_avx2() or os.environ.get("GGML_CPU_TILED_MM", "1").strip() in ("0", ""):
        return frozenset()
    return frozenset({ggml.Q2_K, ggml.Q3_K, ggml.Q4_K, ggml.Q5_K, ggml.Q6_K})
DEFAULT_BATCH = 512  # prompt tokens per prefill graph: bounds the compute buffer


def twin_types(gguf: GGUFFile, expected: dict[str, Expected], on_gpu: dict[str, bool], memory: MemoryEstimate,
               cpu: Device) -> frozenset[int]:
    """tiled_gemm_types, when the CPU's memory holds both layouts of the weights it twins: a
    twin allocates nothing, but a prompt batch reads the file's pages again beside the repacked
    copy. Where they would not both fit, every prefill would read those pages from the disk
    again, so the repacked layout serves prompt batches too (as before twins)."""
    types = tiled_gemm_types()
    if not types or not cpu.memory_total:
        return types
    repacked = sum(gguf.tensors[n].nbytes for n, e in expected.items()
                   if e.use == MATMUL and not on_gpu[e.group] and gguf.tensors[n].type in types)
    working = memory.total("CPU") - memory.parts.get("CPU", {}).get("weights", 0)
    if cpu.memory_free < os.path.getsize(gguf.path) + repacked + working + HEADROOM:
        return frozenset()
    return types


@dataclass
class Completion:
    tokens: list[int]
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    logits: list[np.ndarray] = field(default_factory=list)  # of the first steps, when asked to keep them
    timings_ms: dict[str, float] = field(default_factory=dict)  # the batch's: vision, prefill, decode
    logprobs: list[float] = field(default_factory=list)  # of each token in ``tokens``, as the model gave it


@dataclass(frozen=True)
class BatchItem:
    """One sequence of a batch: its image (or none), prompt token ids, an optional GBNF grammar,
    its token budget and sampling."""

    image: Image.Image | None
    prompt: Sequence[int]
    grammar: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()  # texts that end the answer (the Scheduler honours them)


@dataclass
class _Seq:
    row: int  # self-attention cache row
    slot: int | None  # its cross-attention slot; None when no sequence of the batch has an image
    has_image: bool = False  # False: the slot's content is ignored (rows see no image)
    n_past: int = 0
    image_from: int | None = None  # position of the first <|image|> token
    done: bool = False


class MllamaModel:
    """A loaded Llama 3.2 Vision (or Llama Guard 3 Vision) model."""

    def __init__(self, path: str, config: MllamaConfig, runtime: Runtime, weights: Weights, tokenizer: Tokenizer,
                 gpu_layers: int, layer_on_gpu: dict[int, bool], n_ctx: int, kv_type: int, flash: bool,
                 image_cache: int, n_batch: int, memory: MemoryEstimate, cross_flash: bool | None) -> None:
        self.path, self.config, self.runtime, self.weights = path, config, runtime, weights
        self.tokenizer = tokenizer
        self.gpu_layers = gpu_layers
        self.n_ctx, self.kv_type, self.flash, self.n_batch = n_ctx, kv_type, flash, n_batch
        self.memory = memory
        self._layer_on_gpu = layer_on_gpu
        self._image_cache = image_cache
        self._cross_flash = cross_flash
        self._kv: SelfCache | None = None
        self._cross: CrossCache | None = None
        self._vision = VisionEncoder(runtime, config, weights, flash, kv_type)
        self._graph: tuple[Shape, Graph, int] | None = None  # the last decoder graph, reused while its shape holds
        self._cross_mask: tuple[object, np.ndarray] = (None, np.zeros(0))

    # ---- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str], n_gpu_layers: int = -1, n_ctx: int = DEFAULT_CTX,
             threads: int | None = None, flash_attn: bool = True, kv_f16: bool = True,
             image_cache: int = 4, n_batch: int = DEFAULT_BATCH, fix_cross_norms: bool = True,
             cross_flash: bool | None = None) -> MllamaModel:
        """Read and check the file, estimate memory, place the weights (GPU first) and the tokenizer.

        n_gpu_layers: -1 puts everything on the GPU; N puts the last N text layers there (with
        the vision tower; N above the layer count adds the output layer); 0 keeps all on the CPU.
        flash_attn: flash attention where the GPU backend has it for these head sizes.
        kv_f16: the K/V type of the caches and of the vision encoder's attention (default F16, as
        llama.cpp; F32 for reference-exact runs).
        cross_flash: decoder cross-attention as flash attention (default: where a GPU runs it).
        fix_cross_norms=False reads the cross-attention norms as stored (the behaviour of
        Ollama's own runtime on its files; kept to measure that difference, not for use).
        """
        if n_ctx < 16:
            raise UsageError(f"a context of {n_ctx} tokens is too small")
        if image_cache < 1:
            raise UsageError("the image cache needs at least one slot")
        path = os.fspath(path)
        gguf = GGUFFile(path)
        try:
            config = MllamaConfig.from_gguf(gguf)
            expected = check_tensors(gguf, config)
            gpu = pick_gpu(n_gpu_layers)
            groups = placement(config, n_gpu_layers, gpu is not None)
            layer_on_gpu = {i: groups[f"text.{i}"] for i in range(config.text.n_layer)}
            kv_type = ggml.F16 if kv_f16 else ggml.F32
            n_ctx = pad_keys(n_ctx)
            memory = estimate_memory(gguf, config, expected, groups, n_ctx, 1, image_cache, kv_type, n_batch)
            cpu = cpu_device()
            memory.check(gpu, cpu)
            runtime = Runtime(gpu, threads or llamacpp.default_threads())
            try:
                where = {g: runtime.buffer_type(on) for g, on in groups.items()}
                repack = cpu_repack_buffer_type(runtime.cpu)
                # BF16 products are this CPU's fastest for the image's matrices (measured 2.7-4.6x Q8_0
                # and 1.7-1.9x F16 at 6,432 tokens, benchmarks/README.md); F32 files stay exact.
                bf16 = not groups["vision"] and bool(lib.cpu_has_avx512_bf16())
                to_bf16 = [n for n in image_only_weights(config, expected, groups)
                           if gguf.tensors[n].type != ggml.F32 and n != "mm.0.weight"] if bf16 else []
                weights = load_weights(gguf, expected, where, runtime.buffer_type(False),
                                       cross_norm_fixes(config) if fix_cross_norms else {},
                                       (repack, partial(repack_supports, runtime.cpu, repack)) if repack else None,
                                       keep_plain=[*to_bf16, "mm.0.weight"],
                                       twin_types=twin_types(gguf, expected, groups, memory, cpu))
                cast_weights(runtime, weights, to_bf16, ggml.BF16)
                # The projector, split by the vision state it reads (F16 on a GPU: the vision tower
                # ran faster in F16 than in Q8_0 on an H100, benchmarks/gpu_check_h100.md).
                split_projector(runtime, weights, config, ggml.F32 if gguf.tensors["mm.0.weight"].type == ggml.F32
                                else ggml.BF16 if bf16 else ggml.F16, groups["vision"])
                tokenizer = Tokenizer(gguf)
            except BaseException:
                runtime.free()
                raise
        finally:
            gguf.close()
        gpu_layers = sum(layer_on_gpu.values()) + (1 if groups["output"] else 0)
        if gpu is not None and flash_attn:
            t, v = config.text, config.vision
            flash_attn = (flash_attention_supported(gpu, t.head_dim, t.n_head, t.n_head_kv, kv_type)
                          and flash_attention_supported(gpu, v.n_embd // v.n_head, v.n_head, v.n_head, kv_type))
        return cls(path, config, runtime, weights, tokenizer, gpu_layers, layer_on_gpu, n_ctx, kv_type,
                   flash_attn, image_cache, n_batch, memory, cross_flash)

    @property
    def device(self) -> str:
        return self.runtime.device_label

    @property
    def n_vocab(self) -> int:
        return self.config.text.n_vocab

    # ---- images -----------------------------------------------------------------------------

    def preprocess(self, image: Image.Image | str | os.PathLike[str] | bytes) -> Preprocessed:
        """Pixel values (max_tiles, 3, tile, tile), aspect-ratio id and mask, as the reference computes them."""
        v = self.config.vision
        return preprocess(open_image(image), v.image_size, v.max_tiles)

    def encode_image(self, image: Image.Image) -> None:
        """Encode a page into the image cache now (later prompts about it skip the vision encoder)."""
        self._cached_slot(image)

    def vision_features(self, image: Image.Image) -> np.ndarray:
        """The vision tower's output before the projector: (max_tiles, tokens per tile, n_out)."""
        return self._vision.features(self.preprocess(image))

    def _cross_uses_flash(self, layer: int) -> bool:
        """Flash attention where a GPU runs the layer; grouped matrix products on the CPU, where
        they read each image key once per KV head instead of once per query head (measured:
        22.5 vs 19.5 tok/s decoding with an image, benchmarks/mllama_cpu_speed.py)."""
        if self._cross_flash is not None:
            return self._cross_flash
        return self.flash and self._layer_on_gpu[layer] and self.runtime.gpu is not None

    def _cross_cache(self, n_work: int) -> CrossCache:
        """The image K/V cache, re-made (dropping cached images) when a batch needs more working slots."""
        if self._cross is None or n_work > self._cross.n_work:
            old_work = 0
            if self._cross is not None:
                old_work = self._cross.n_work
                self._forget_graph()
                self._cross.free()
            self._cross = CrossCache(self.runtime, self.config, self._layer_on_gpu.__getitem__,
                                     self._image_cache, max(n_work, old_work), self.kv_type,
                                     lambda i: not self._cross_uses_flash(i))
        return self._cross

    @staticmethod
    def image_key(image: Image.Image) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{image.mode} {image.size}".encode())
        h.update(image.tobytes())
        return h.hexdigest()

    def _cached_slot(self, image: Image.Image) -> int:
        """The cache slot holding this image's K/V, encoding it first when it is not cached."""
        cross = self._cross_cache(0)
        key = self.image_key(image)
        slot = cross.find(key)
        if slot is None:
            slot = cross.victim()
            self._vision.encode(self.preprocess(image), cross, slot)
            cross.slots[slot].image = key
        cross.touch(slot)
        return slot

    def _copy_slot(self, src: int, dst: int) -> None:
        cross = self._cross_cache(0)
        g = Graph(self.runtime)
        try:
            for store in (cross.k, cross.v):
                for layer in store:
                    src_view = cross.view(g.ops, store, layer, src, 1)
                    g.expand(g.ops.cpy(src_view, cross.view(g.ops, store, layer, dst, 1)))
            g.run({})
        finally:
            g.free()
        cross.slots[dst].n_keys = cross.slots[src].n_keys

    # ---- the decoder ------------------------------------------------------------------------

    def _self_cache(self, n_seq: int) -> SelfCache:
        if self._kv is None or self._kv.n_seq < n_seq:
            if self._kv is not None:
                self._forget_graph()
                self._kv.free()
            self._kv = SelfCache(self.runtime, self.config, self._layer_on_gpu.__getitem__, self.n_ctx,
                                 n_seq, self.kv_type)
        return self._kv

    def _forget_graph(self) -> None:
        if self._graph is not None:
            self._graph[1].free()
            self._graph = None

    def _forward(self, seqs: list[_Seq], new: list[list[int]], all_rows: bool = False) -> np.ndarray:
        """Feed each sequence its new tokens (the same count for all); logits of the last (or every) row."""
        b, n = len(seqs), len(new[0])
        kv = self._kv
        assert kv is not None and all(len(x) == n for x in new)
        assert all(s.row == seqs[0].row + i for i, s in enumerate(seqs))
        if max(s.n_past for s in seqs) + n > self.n_ctx:
            raise PageError(f"the prompt and answer need more than the model's context of {self.n_ctx} tokens",
                            hint="raise --ctx or lower --max-tokens")
        first_slot, cross = seqs[0].slot, self._cross
        if first_slot is not None:
            assert cross is not None and all(s.slot == first_slot + i for i, s in enumerate(seqs))
        n_win = min(pad_keys(max(s.n_past for s in seqs) + n), self.n_ctx)
        shape = Shape(b, n, n_win, seqs[0].row, seqs[0].slot, b * n if all_rows else b)
        if self._graph is None or self._graph[0] != shape:
            self._forget_graph()
            g, logits = build_decoder(self.runtime, self.config, self.weights, kv, self._cross, shape, self.flash)
            self._graph = (shape, g, logits)
        _, g, logits = self._graph

        steps = np.arange(n)
        pos = np.stack([s.n_past + steps for s in seqs])  # (b, n)
        inputs: dict[str, np.ndarray] = {
            "tokens": np.asarray(new, dtype=np.int32).reshape(-1),
            "positions": pos.reshape(-1).astype(np.int32),
            "cache_rows": (np.array([s.row for s in seqs])[:, None] * self.n_ctx + pos).reshape(-1).astype(np.int64),
            "mask": mask_rows(np.arange(n_win)[None, None, :] > pos[:, :, None])[:, None],  # (b, 1, n, win)
            "out_rows": (np.arange(b * n) if all_rows else np.arange(b) * n + n - 1).astype(np.int32),
        }
        if first_slot is not None:
            assert cross is not None
            # A sequence without an image attends to all keys (finite values, result zeroed below):
            # a fully masked row would turn into NaN.
            keys = tuple(cross.slots[first_slot + i].n_keys if s.has_image else cross.n_keys
                         for i, s in enumerate(seqs))
            rows = n * self.config.text.n_head // self.config.text.n_head_kv
            if self._cross_mask[0] != (keys, rows):  # the same every decode step of a batch: made once
                blocked = np.arange(cross.n_keys)[None, :] >= np.array(keys)[:, None]  # (b, keys)
                mask = mask_rows(np.broadcast_to(blocked[:, None, None, :], (b, 1, rows, cross.n_keys)))
                self._cross_mask = ((keys, rows), mask)
            inputs["cross_mask"] = self._cross_mask[1]
            after = np.zeros((b, n), dtype=np.float32)
            for i, (s, toks) in enumerate(zip(seqs, new, strict=True)):
                if not s.has_image:
                    continue
                if s.image_from is None and self.tokenizer.image in toks:
                    s.image_from = s.n_past + toks.index(self.tokenizer.image)
                if s.image_from is not None:
                    after[i] = pos[i] >= s.image_from
            inputs["after_image"] = after.reshape(-1, 1)
        g.run(inputs)
        for s in seqs:
            s.n_past += n
        return ggml.get_data(logits)

    def _prefill(self, seq: _Seq, prompt: Sequence[int], all_rows: bool = False) -> np.ndarray:
        out = []
        for start in range(0, len(prompt), self.n_batch):
            chunk = list(prompt[start:start + self.n_batch])
            last = start + self.n_batch >= len(prompt)
            logits = self._forward([seq], [chunk], all_rows=all_rows)
            if all_rows or last:
                out.append(logits)
        return np.concatenate(out)

    def _check_prompt(self, prompt: Sequence[int]) -> None:
        if not prompt:
            raise UsageError("the prompt has no tokens")
        bad = [t for t in prompt if not 0 <= t < self.tokenizer.n_tokens]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{self.tokenizer.n_tokens - 1})")
        if len(prompt) >= self.n_ctx:
            raise ContextFull(f"the prompt is {len(prompt)} tokens long but the context holds {self.n_ctx}",
                              need=len(prompt) + 1, have=self.n_ctx, hint="raise --ctx")

    def logits(self, image: Image.Image | None, token_ids: Sequence[int]) -> np.ndarray:
        """Logits (n_tokens, n_vocab) at every position of one sequence, from an empty cache."""
        self._check_prompt(token_ids)
        self._self_cache(1)
        seq = _Seq(row=0, slot=None) if image is None else _Seq(row=0, slot=self._cached_slot(image), has_image=True)
        return self._prefill(seq, token_ids, all_rows=True)

    def generate(self, image: Image.Image | None, prompt: Sequence[int], max_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, grammar: str | None = None,
                 keep_logits: int = 0, stop: Collection[int] | None = None) -> Completion:
        """Continue one prompt until an end token, max_tokens or the context's end."""
        item = BatchItem(image, prompt, grammar, max_tokens, temperature, top_p, seed)
        return self.generate_batch([item], keep_logits, stop)[0]

    def generate_batch(self, items: Sequence[BatchItem], keep_logits: int = 0,
                       stop: Collection[int] | None = None) -> list[Completion]:
        """Generate for several sequences at once: each is prefilled alone, then all decode together,
        one graph per step, so every step reads the weights once for the whole batch.

        keep_logits: keep the logits of the first N steps in each Completion.
        stop: the end tokens (default: the model's end-of-turn tokens; empty: run to max_tokens).
        """
        if not items:
            return []
        for it in items:
            self._check_prompt(it.prompt)
            if it.max_tokens < 1:
                raise UsageError(f"max_tokens must be at least 1, not {it.max_tokens}")
        b = len(items)
        t0 = time.perf_counter()
        self._self_cache(b)
        seqs = self._place_images(items)
        t1 = time.perf_counter()
        samplers = [Sampler(self.tokenizer, self.n_vocab, it.temperature, it.top_p, it.seed, it.grammar)
                    for it in items]
        outs: list[list[int]] = [[] for _ in items]
        kept: list[list[np.ndarray]] = [[] for _ in items]
        finish = ["length"] * b
        nxt: list[int] = []
        for i, (s, it) in enumerate(zip(seqs, items, strict=True)):
            row = self._prefill(s, it.prompt)[-1]
            if keep_logits:
                kept[i].append(row.copy())
            nxt.append(samplers[i].sample(row))
        t2 = time.perf_counter()
        stop = self.tokenizer.stop if stop is None else set(stop)
        n_steps = 0
        try:
            while True:
                for i, (s, it) in enumerate(zip(seqs, items, strict=True)):
                    if s.done:
                        continue
                    if nxt[i] in stop:
                        s.done, finish[i] = True, "stop"
                        continue
                    outs[i].append(nxt[i])
                    if len(outs[i]) >= it.max_tokens or s.n_past + 1 > self.n_ctx:
                        s.done = True
                if all(s.done for s in seqs):
                    break
                # Finished sequences stay in the batch (the graph keeps its shape); they re-write
                # their last cache row with an end token and their outputs are ignored.
                feed = []
                for i, s in enumerate(seqs):
                    if s.done:
                        s.n_past -= 1
                        feed.append([self.tokenizer.eot])
                    else:
                        feed.append([nxt[i]])
                logits = self._forward(seqs, feed)
                n_steps += 1
                for i, s in enumerate(seqs):
                    if not s.done:
                        if len(kept[i]) < keep_logits:
                            kept[i].append(logits[i].copy())
                        nxt[i] = samplers[i].sample(logits[i])
        finally:
            for smp in samplers:
                smp.close()
        t3 = time.perf_counter()
        timings = {"vision": (t1 - t0) * 1e3, "prefill": (t2 - t1) * 1e3, "decode": (t3 - t2) * 1e3,
                   "decode_steps": float(n_steps)}
        return [Completion(outs[i], self.tokenizer.decode(outs[i]), finish[i], len(it.prompt), kept[i], timings,
                           samplers[i].logprobs[: len(outs[i])])
                for i, it in enumerate(items)]

    def _place_images(self, items: Sequence[BatchItem]) -> list[_Seq]:
        """Give each sequence a cache row and its image's K/V in consecutive slots.

        One sequence reads its cached slot directly. A batch works in the slots after the cache:
        cached images are copied there; new ones are encoded there, then copied into the cache.
        """
        if not any(it.image is not None for it in items):
            return [_Seq(row=i, slot=None) for i in range(len(items))]
        if len(items) == 1:
            assert items[0].image is not None
            return [_Seq(row=0, slot=self._cached_slot(items[0].image), has_image=True)]
        cross = self._cross_cache(len(items))
        seqs = []
        for i, it in enumerate(items):
            slot = cross.n_cached + i
            if it.image is not None:
                self._work_slot(it.image, slot)
            seqs.append(_Seq(row=i, slot=slot, has_image=it.image is not None))
        return seqs

    def _work_slot(self, image: Image.Image, slot: int) -> bool:
        """Put an image's K/V in a working slot: copied from the cache, or encoded there (and then
        cached). True when it had to be encoded."""
        cross = self._cross_cache(0)
        key = self.image_key(image)
        src = cross.find(key)
        encoded = src is None
        if src is None:
            self._vision.encode(self.preprocess(image), cross, slot)
            src = cross.victim()
            self._copy_slot(slot, src)
            cross.slots[src].image = key
        else:
            self._copy_slot(src, slot)
        cross.touch(src)
        return encoded

    # ---- step-wise decoding, for continuous batching (scheduler.py) --------------------------

    def reserve(self, n_seq: int) -> None:
        """Caches for n_seq sequences decoding side by side, made before the first of them starts:
        growing a cache later re-makes it, which drops the K/V of sequences under way."""
        self._self_cache(n_seq)
        self._cross_cache(n_seq)

    def begin(self, row: int, image: Image.Image | None, prompt: Sequence[int], keep: int = 0
              ) -> tuple[_Seq, np.ndarray, dict[str, float], bool]:
        """Start a sequence in cache row ``row`` (its image's K/V in that row's working slot) and
        prefill its prompt alone: its state, the logits after the prompt, the time each part took,
        and whether the image had to be encoded (False: it came from the image cache).

        ``keep``: the row's cache already holds the first ``keep`` prompt tokens (an earlier turn
        of the same conversation, with the same image): only the rest is prefilled.
        """
        self._check_prompt(prompt)
        if not 0 <= keep < len(prompt):
            raise UsageError(f"cannot keep {keep} of {len(prompt)} prompt tokens: at least one is prefilled")
        t0 = time.perf_counter()
        seq, encoded = _Seq(row=row, slot=None, n_past=keep), False
        if image is not None:
            slot = self._cross_cache(0).n_cached + row
            seq = _Seq(row=row, slot=slot, has_image=True, n_past=keep)
            encoded = self._work_slot(image, slot)
            if self.tokenizer.image in prompt[:keep]:  # the image token is in the kept part: not seen again
                seq.image_from = list(prompt).index(self.tokenizer.image)
        t1 = time.perf_counter()
        logits = self._prefill(seq, prompt[keep:])[-1]
        return seq, logits, {"vision": (t1 - t0) * 1e3, "prefill": (time.perf_counter() - t1) * 1e3}, encoded

    def step(self, rows: Sequence[_Seq | None], tokens: Sequence[int], idle_at: Sequence[int] = ()) -> np.ndarray:
        """One decode step over cache rows 0..len(rows)-1, a token each: a free row (None) writes an
        end token at position ``idle_at[row]`` (default 0: where nothing is kept) and its logits
        are ignored."""
        images = any(s is not None and s.has_image for s in rows)
        n_cached = self._cross.n_cached if self._cross is not None else 0
        seqs = []
        for i, s in enumerate(rows):
            s = s or _Seq(row=i, slot=None, n_past=idle_at[i] if i < len(idle_at) else 0)
            # The graph wants consecutive slots: rows without an image read their row's slot and
            # have the result zeroed, as in generate_batch.
            s.slot = n_cached + i if images else None
            seqs.append(s)
        return self._forward(seqs, [[t] for t in tokens])

    def close(self) -> None:
        self._forget_graph()
        for c in (self._kv, self._cross):
            if c is not None:
                c.free()
        self._kv = self._cross = None
        self.weights.free()
        self.tokenizer.close()
        self.runtime.free()
