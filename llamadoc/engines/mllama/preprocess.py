"""Image preprocessing for the vision encoder, equal to the reference: canvas, resize, pad, normalise, tiles."""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from llamadoc.errors import DocumentError

from .loader import aspect_ratios

# CLIP's statistics, which Llama 3.2 Vision was trained with (Ollama's files do not store them).
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
RESCALE = 1 / 255


@dataclass(frozen=True)
class Preprocessed:
    pixel_values: np.ndarray  # (max_tiles, 3, tile, tile) float32; unused tiles are zero
    aspect_ratio_id: int  # 1 + index of the tile grid in aspect_ratios(max_tiles)
    aspect_ratio_mask: np.ndarray  # (max_tiles,) int64: 1 for the tiles the image fills
    grid: tuple[int, int]  # tile rows, tile columns

    @property
    def n_tiles(self) -> int:
        return self.grid[0] * self.grid[1]


# What encoded images are decoded as: the page formats llamadoc reads (inputs/sniff.py), never a
# plugin whose decoder runs another program (PostScript's runs Ghostscript).
DECODED = ("PNG", "JPEG", "TIFF", "GIF", "WEBP", "BMP", "JPEG2000", "PPM")


def open_image(source: Image.Image | str | os.PathLike[str] | bytes) -> Image.Image:
    """A decoded PIL image from a PIL image, a path or encoded bytes; DocumentError when undecodable."""
    if isinstance(source, Image.Image):
        return source
    name = "image bytes" if isinstance(source, bytes) else str(source)
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source), formats=DECODED)
        img.load()  # PIL decodes lazily: truncated data only fails here
    except FileNotFoundError:
        raise DocumentError(f"{name}: no such image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DocumentError(f"{name}: cannot decode the image ({e})") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as the reference processor does."""
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def choose_canvas(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """Tile grid (rows, columns): the smallest upscale if any canvas fits, else the mildest downscale."""
    grids = aspect_ratios(max_tiles)
    scales = [min(h * tile / height, w * tile / width) for h, w in grids]
    ups = [s for s in scales if s >= 1]
    best = min(ups) if ups else max(scales)
    candidates = [g for g, s in zip(grids, scales, strict=True) if s == best]
    return min(candidates, key=lambda g: g[0] * g[1])  # ties: the smallest area, first in order


def fit_size(height: int, width: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    """New (height, width) keeping the aspect ratio, each side clamped to [tile, canvas]."""
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def preprocess(image: Image.Image, tile: int, max_tiles: int) -> Preprocessed:
    img = to_rgb(image)
    width, height = img.size
    if width < 1 or height < 1:
        raise DocumentError("the image is empty (0 pixels)")
    rows, cols = choose_canvas(height, width, max_tiles, tile)
    new_h, new_w = fit_size(height, width, rows * tile, cols * tile, tile)
    resized = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
    canvas = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)  # pad bottom/right with black
    canvas[:new_h, :new_w] = resized
    x = (canvas.astype(np.float64) * RESCALE).astype(np.float32)
    x = (x - MEAN) / STD  # float32 arithmetic, as the reference
    tiles = x.reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, tile, tile)
    pixels = np.zeros((max_tiles, 3, tile, tile), dtype=np.float32)
    pixels[: rows * cols] = tiles
    mask = np.zeros(max_tiles, dtype=np.int64)
    mask[: rows * cols] = 1
    return Preprocessed(pixels, aspect_ratios(max_tiles).index((rows, cols)) + 1, mask, (rows, cols))
