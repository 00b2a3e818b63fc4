"""Inference backends. Each is imported only when chosen: loading llama.cpp is slow."""

from __future__ import annotations

from llamadoc.engines.base import LoadOptions, VisionEngine
from llamadoc.errors import ModelError


def load_vision_engine(engine: str, options: LoadOptions, max_pixels: int) -> VisionEngine:
    if engine == "mtmd":
        from llamadoc.engines.mtmd import MtmdEngine

        return MtmdEngine(options, max_pixels)
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaEngine

        return MllamaEngine(options)
    raise ModelError(f"engine {engine!r} cannot answer questions about pages", hint="pick a vision model")
