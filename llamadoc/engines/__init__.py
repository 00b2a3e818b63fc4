"""Inference backends. Each is imported only when chosen: loading llama.cpp is slow."""

from __future__ import annotations

from llamadoc.engines.base import GuardEngine, LoadOptions, VisionEngine
from llamadoc.errors import ModelError


def load_vision_engine(engine: str, options: LoadOptions, max_pixels: int) -> VisionEngine:
    if engine == "mtmd":
        from llamadoc.engines.mtmd import MtmdEngine

        return MtmdEngine(options, max_pixels)
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaEngine

        return MllamaEngine(options)
    raise ModelError(f"engine {engine!r} cannot answer questions about pages", hint="pick a vision model")


def load_guard_engine(engine: str, options: LoadOptions, model_name: str) -> GuardEngine:
    if engine == "llama":
        from llamadoc.engines.llama import LlamaGuardEngine

        return LlamaGuardEngine(options, model_name)
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaGuardEngine

        return MllamaGuardEngine(options, model_name)
    raise ModelError(f"engine {engine!r} cannot run a guard model", hint="pick a llama-guard model")
