"""Inference backends. Each is imported only when chosen: loading llama.cpp is slow."""

from __future__ import annotations

from typing import Any

from llamadoc.engines.base import GuardEngine, LoadOptions, VisionEngine
from llamadoc.errors import ModelError, UsageError

MAX_GRAMMAR = 1 << 20  # characters of GBNF a schema may become (examples/invoice.yaml: about 3 KiB)


def check_grammar(schema: dict[str, Any]) -> None:
    """A UsageError when a JSON Schema (already valid as one) cannot become a grammar for
    constrained decoding: checked once, before the first page, rather than failing every page."""
    from llamadoc.engines.llamacpp import schema_grammar  # both engines decode with its grammar

    grammar = schema_grammar(schema)
    if len(grammar) > MAX_GRAMMAR:  # llama.cpp would parse it for every request: refused, not slowly served
        raise UsageError(f"the JSON schema makes a grammar of {len(grammar) >> 10:,} KiB, over the limit of "
                         f"{MAX_GRAMMAR >> 10:,} KiB", hint="simplify the schema (fewer repetitions and variants)")


def vision_engine_class(engine: str) -> type[VisionEngine]:
    """The class of a vision engine, whose attributes declare what it can do (max_batch,
    max_images, supports_schema) before one is loaded: for a Ray driver sizing its batches."""
    if engine == "mtmd":
        from llamadoc.engines.mtmd import MtmdEngine

        return MtmdEngine
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaEngine

        return MllamaEngine
    raise _not_vision(engine)


def _not_vision(engine: str) -> ModelError:
    return ModelError(f"engine {engine!r} cannot answer questions about pages", hint="pick a vision model")


def load_vision_engine(engine: str, options: LoadOptions, max_pixels: int) -> VisionEngine:
    if engine == "mtmd":
        from llamadoc.engines.mtmd import MtmdEngine

        return MtmdEngine(options, max_pixels)  # it sizes the context for its images' tokens
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaEngine

        return MllamaEngine(options)
    raise _not_vision(engine)


def load_guard_engine(engine: str, options: LoadOptions, model_name: str) -> GuardEngine:
    if engine == "llama":
        from llamadoc.engines.llama import LlamaGuardEngine

        return LlamaGuardEngine(options, model_name)
    if engine == "mllama":
        from llamadoc.engines.mllama.engine import MllamaGuardEngine

        return MllamaGuardEngine(options, model_name)
    raise ModelError(f"engine {engine!r} cannot run a guard model", hint="pick a llama-guard model")


def devices() -> list[dict[str, Any]]:
    """ggml's devices (CPU, CUDA, Metal, ...) with their memory, for ``llamadoc doctor``."""
    from llamadoc.engines import llamacpp
    from llamadoc.engines.mllama.backend import describe_backends

    llamacpp.set_logging(False)
    return describe_backends()


def gpu_offload() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    from llamadoc.engines import llamacpp

    return llamacpp.gpu_available()
