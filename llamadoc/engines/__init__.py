"""Inference backends. Each is imported only when chosen: loading llama.cpp is slow."""

from __future__ import annotations

import os
from typing import Any

# ggml's CPU threads are an OpenMP team (libgomp in llama-cpp-python's Linux builds) that meets
# at a barrier after every graph node. Left alone, libgomp spins 300,000 times (milliseconds)
# before it sleeps: when another process holds a core, the waiting thread spins on the core its
# partner needs. On a shared 2-core VM, 10,000 spins made 2-thread decoding 4.2x faster under
# other work and cost nothing when the machine was quiet, where fewer spins (or sleeping at
# once) lost 2.5-13% (benchmarks/README.md, "Threads that wait"). libgomp reads it once, when
# the first ggml library loads: set here, where the engines package starts, so that any module
# of it comes first (tokenizer.py imports llama_cpp at its top). A wait policy or spin count the
# user set is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

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
