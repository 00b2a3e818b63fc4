"""Memory needed before loading: weights, KV cache, image K/V and compute buffers, per device.

Checked against the GPU's free memory so a model that does not fit ends in a clear ResourceError
instead of an out-of-memory failure halfway through loading.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from llamadoc.errors import ResourceError

from . import ggml
from .backend import Device
from .cache import cross_cache_bytes, self_cache_bytes
from .ggml import lib
from .gguf_io import GGUFFile
from .loader import (
    DENSE,
    SCALAR,
    Expected,
    MllamaConfig,
    check_tensors,
    image_only_weights,
    placement,
)

GIB = 1024**3
HEADROOM = 512 * 1024**2  # the backend's own context, fragmentation, CUDA graphs


@dataclass
class MemoryEstimate:
    """Bytes per device ("GPU" or "CPU") and purpose: weights, kv_cache, images, compute."""

    parts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, device: str, what: str, n: int) -> None:
        if n <= 0:
            return
        d = self.parts.setdefault(device, {})
        d[what] = d.get(what, 0) + n

    def total(self, device: str) -> int:
        return sum(self.parts.get(device, {}).values())

    def check(self, gpu: Device | None, cpu: Device | None = None) -> None:
        """A ResourceError, before anything is allocated, when a device has too little free memory."""
        if gpu is not None:
            self._fits("GPU", gpu, self.parts.get("GPU", {}), "offload fewer layers (--gpu-layers N), or lower --ctx")
        if cpu is not None and cpu.memory_total:
            # Weights on the CPU are mapped from the file and paged in by the OS: not counted.
            working = {k: v for k, v in self.parts.get("CPU", {}).items() if k != "weights"}
            self._fits("CPU", cpu, working, "lower --ctx, or use a GPU")

    @staticmethod
    def _fits(kind: str, dev: Device, parts: dict[str, int], hint: str) -> None:
        need = sum(parts.values()) + HEADROOM
        if need > dev.memory_free:
            detail = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items())
            raise ResourceError(
                f"the model needs {need / GIB:.1f} GiB on {dev.label} ({detail} GiB), "
                f"{dev.memory_free / GIB:.1f} GiB are free",
                hint=hint)

    def summary(self) -> str:
        return "; ".join(f"{dev}: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items())
                         for dev, parts in self.parts.items())


def estimate_memory(f: GGUFFile, c: MllamaConfig, expected: dict[str, Expected], on_gpu: dict[str, bool],
                    n_ctx: int, n_seq: int, n_images: int, kv_type: int, n_batch: int) -> MemoryEstimate:
    """``on_gpu`` maps tensor groups ("vision", "text.N", "output", "embd") to their placement."""
    est = MemoryEstimate()
    for name, exp in expected.items():
        if exp.use == SCALAR:
            continue
        info = f.tensors[name]
        widened = exp.use == DENSE and info.type != ggml.F32  # stored narrower than the F32 it is used as
        est.add("GPU" if on_gpu[exp.group] else "CPU", "weights", info.nbytes * (2 if widened else 1))
    # Caches follow their layers; splitting them pro rata is exact enough for a fit check.
    share = sum(on_gpu[f"text.{i}"] for i in range(c.text.n_layer)) / c.text.n_layer
    for what, n in (("kv_cache", self_cache_bytes(c, n_ctx, n_seq, kv_type)),
                    ("images", cross_cache_bytes(c, n_images + (n_seq if n_seq > 1 else 0), kv_type))):
        est.add("GPU", what, int(n * share))
        est.add("CPU", what, n - int(n * share))
    # Copies made at load (model.py): the projector split by the state it reads (F16 or BF16; F32
    # for F32 files) and, on a CPU with AVX512-BF16, the image-only matrices in BF16. CPU copies
    # are not mapped from the file, so they count where the mapped weights do not.
    v, t = c.vision, c.text
    vision_dev = "GPU" if on_gpu["vision"] else "CPU"
    proj = f.tensors["mm.0.weight"]
    copies = {vision_dev: v.n_out * t.n_embd * (4 if proj.type == ggml.F32 else 2)}
    if not on_gpu["vision"] and lib.cpu_has_avx512_bf16():
        copies["CPU"] += sum(2 * math.prod(expected[n].ne) for n in image_only_weights(c, expected, on_gpu)
                             if n != "mm.0.weight" and f.tensors[n].type != ggml.F32)
    for dev, n in copies.items():
        est.add(dev, "weights" if dev == "GPU" else "converted weights", n)
    # Compute buffers: the largest graph's live activations. The vision graph's peak is about six
    # token-by-width tensors and the projector's accumulated output (measured for a 4-tile page:
    # 217 MiB for benchmarks' cpu-page shape, 260 for the 11B; this gives 238 and 288).
    n_tok = v.max_tiles * v.n_pos_padded
    vision = 4 * n_tok * 6 * v.n_embd + 4 * v.n_tokens * t.n_embd
    text = 4 * n_batch * (8 * t.n_embd + 3 * t.n_ff) + 4 * t.n_vocab * max(n_seq, 1)
    est.add("GPU" if on_gpu["vision"] else "CPU", "compute", max(vision, text))
    return est


def estimate_model_memory(path: str | os.PathLike[str], n_gpu_layers: int = -1, n_ctx: int = 4096,
                          n_seq: int = 1, image_cache: int = 4, kv_f16: bool = True,
                          n_batch: int = 512) -> MemoryEstimate:
    """The estimate for a file without loading it, as if a GPU were present (for planning and doctor)."""
    f = GGUFFile(path)
    try:
        c = MllamaConfig.from_gguf(f)
        expected = check_tensors(f, c)
        return estimate_memory(f, c, expected, placement(c, n_gpu_layers, True), n_ctx, n_seq, image_cache,
                               ggml.F16 if kv_f16 else ggml.F32, n_batch)
    finally:
        f.close()
