"""Shared by the mllama tests and tools/mllama_reference.py: fixture images, fixture paths, converted models.

Images are synthesised from a seed rather than stored, so fixtures hold only the reference outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures" / "mllama"
REPO = Path(__file__).parent.parent

# name -> (width, height, mode); sizes chosen (for 56-pixel tiles) to land on these tile grids:
IMAGES = {
    "tiny": (20, 14, "RGB"),  # 1x1, upscaled
    "square": (200, 200, "RGB"),  # 2x2, downscaled
    "wide": (168, 56, "RGB"),  # 1x3, fits exactly (no resize)
    "tall": (50, 160, "RGB"),  # 3x1, upscaled, padded
    "taller": (60, 250, "RGB"),  # 4x1, downscaled
    "huge": (3000, 2000, "RGB"),  # 2x2, heavily downscaled
    "rgba": (90, 40, "RGBA"),  # transparency composited on white
    "gray": (40, 90, "L"),
}
GRIDS = {"tiny": (1, 1), "square": (2, 2), "wide": (1, 3), "tall": (3, 1), "taller": (4, 1), "huge": (2, 2),
         "rgba": (1, 2), "gray": (2, 1)}


def fixture_image(name: str) -> Image.Image:
    """A deterministic picture: smooth gradients plus noise, so resizing has something to do."""
    w, h, mode = IMAGES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], axis=-1) * 200
    rgb = np.clip(base + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    if mode == "RGBA":
        alpha = (np.arange(w)[None, :].repeat(h, 0) * 255 // max(w - 1, 1)).astype(np.uint8)
        img = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    elif mode == "L":
        img = img.convert("L")
    return img


def load_case_file(fixture: str) -> dict[str, Any]:
    return json.loads((FIXTURES / fixture / "cases.json").read_text())


def load_reference(fixture: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / fixture / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def convert_fixture(fixture: str, out: Path, quant: str) -> Path:
    """Convert a fixture checkpoint in a child process: a ggml abort must not take pytest down."""
    code = ("import sys; from llamadoc.engines.mllama.convert import convert; "
            "convert(sys.argv[1], sys.argv[2], sys.argv[3])")
    run_python(code, str(FIXTURES / fixture / "checkpoint"), str(out), quant)
    return out


def run_python(code: str, *args: str, timeout: float = 300) -> str:
    """Run Python code in a child process from the repo root; its stdout, or the failure as an AssertionError."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"child exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return p.stdout


def rewrite_gguf(src: Path, dst: Path, drop: tuple[str, ...] = (), reshape: dict[str, tuple[int, ...]] | None = None,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Copy a GGUF, dropping tensors, giving some another shape (same bytes) or changing metadata."""
    from llamadoc.engines.mllama.gguf_io import GGUFFile, GGUFWriter

    f = GGUFFile(src)
    meta = {k: f.get(k) for k in f.keys()}
    meta.update(metadata or {})
    w = GGUFWriter(dst, meta)
    data = np.memmap(src, dtype=np.uint8, mode="r")
    for name, info in f.tensors.items():
        if name in drop:
            continue
        w.add_tensor(name, info.type, (reshape or {}).get(name, info.ne),
                     lambda info=info: [data[info.offset:info.offset + info.nbytes].tobytes()])
    w.write()
    f.close()
    return dst


def engine_error(code: str, *args: str) -> str:
    """Run engine code in a child; return 'ErrorClass: message' of the llamadoc error it raised, or 'ok'."""
    wrapped = ("import sys\nfrom llamadoc.errors import LlamadocError\ntry:\n"
               + "".join(f"    {line}\n" for line in code.splitlines())
               + "    print('ok')\nexcept LlamadocError as e:\n    print(f'{type(e).__name__}: {e}')\n")
    return run_python(wrapped, *args).strip().splitlines()[-1]
