"""What the llama-cpp-python engines share: quiet logging, GPU detection, loading a model."""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from llamadoc.engines.base import LoadOptions
from llamadoc.errors import ModelError, UsageError
from llamadoc.interrupt import called_from_c

_callbacks: dict[bool, Any] = {}  # kept referenced: ctypes callbacks die with their Python object


def set_logging(verbose: bool) -> None:
    """Route llama.cpp, ggml and libmtmd logs to stderr when verbose, else drop them.

    ``Llama(verbose=False)`` does not silence libmtmd (about 40 lines per image), so
    every logger gets the same callback here.
    """
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd_cpp
    from llama_cpp import _logger

    _logger.set_verbose(verbose)
    if verbose not in _callbacks:
        _callbacks[verbose] = llama_cpp.llama_log_callback(_echo_log if verbose else _drop_log)
    callback = _callbacks[verbose]
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))


# Our own callbacks, not llama-cpp-python's: a Ctrl-C landing in one is deferred, not
# swallowed by ctypes (see llamadoc.interrupt).
@called_from_c
def _drop_log(level: int, text: bytes, data: Any) -> None:
    return None


@called_from_c
def _echo_log(level: int, text: bytes, data: Any) -> None:
    sys.stderr.write((text or b"").decode("utf-8", errors="replace"))
    sys.stderr.flush()


def gpu_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def default_threads() -> int:
    """Physical-ish cores: llama.cpp slows down badly when threads outnumber free cores."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, count // 2) if count > 4 else count


def round_up(value: int, step: int = 256) -> int:
    return -(-value // step) * step


def load_llama(options: LoadOptions, n_ctx: int, threads: int, what: str = "", **extra: Any) -> Any:
    """A llama_cpp.Llama as both engines want it: all layers on the GPU unless told
    otherwise, flash attention where there is a GPU, batches as large as the context."""
    import llama_cpp

    gpu = gpu_available()
    try:
        return llama_cpp.Llama(
            model_path=options.model_path,
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 2048),
            n_ubatch=min(n_ctx, 2048),
            n_gpu_layers=gpu_layers(options) if gpu else 0,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=options.flash_attn and gpu,
            verbose=options.verbose,
            **extra,
        )
    except ValueError as err:
        raise ModelError(f"llama.cpp cannot load {what}{options.model_path}: {err}") from None


def gpu_layers(options: LoadOptions) -> int:
    """Layers to offload when a GPU is there: -1 means all of them."""
    return options.gpu_layers if options.gpu_layers >= 0 else 10_000


# What a JSON string may not hold raw (RFC 8259 §7): the quote, the backslash and the control
# characters, which must be escaped. llama-cpp-python's converter lets them through its negated
# classes ([^"\\] in "char", [^\x0A\x0D] for a pattern's "."), so a random or confused model could
# write a tab or an ESC into a string and the answer would not parse; llama.cpp fixed its own
# converter the same way (PR #5888).
_NOT_IN_STRINGS = r'"\\\x7F\x00-\x1F'


def schema_grammar(schema: dict[str, Any]) -> str:
    """GBNF for a JSON schema, built by the same code llama-cpp-python's response_format uses,
    with raw control characters kept out of strings (escapes such as \\n stay allowed)."""
    remote = next(_remote_refs(schema), None)
    if remote is not None:  # the converter would fetch it over the network
        raise UsageError(f"the JSON schema refers to {remote!r}, and llamadoc never fetches schemas",
                         hint="put that definition into the schema's $defs and refer to it as #/$defs/...")
    try:
        grammar = _to_gbnf(schema)
    except Exception as err:  # the converter raises several types on schemas it cannot express
        reason = " ".join(str(err).split())
        raise UsageError(f"the JSON schema cannot be turned into a grammar: {reason[:160]}",
                         hint="simplify the schema (plain types, properties, items, enums)") from None
    return _strict_strings(grammar)


def _to_gbnf(schema: dict[str, Any]) -> str:
    """llama-cpp-python's json_schema_to_gbnf, with its literals' backslashes escaped: it writes an
    enum value or a key as JSON text (json.dumps) into a GBNF literal, where "\\n" then reads as
    a raw newline, and a value "a\nb" came out unparseable."""
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):  # type: ignore[no-untyped-call,unused-ignore]
        def _format_literal(self, literal: str) -> str:
            return str(super()._format_literal(literal.replace("\\", "\\\\")))  # type: ignore[no-untyped-call]

    converter: Any = Converter(prop_order={}, allow_fetch=False, dotall=False,  # type: ignore[no-untyped-call]
                               raw_pattern=False)
    converter.visit(converter.resolve_refs(json.loads(json.dumps(schema)), "stdin"), "")
    return str(converter.format_grammar())


def _strict_strings(grammar: str) -> str:
    """Every negated class ([^...], found only where a string's characters are made: char, dot, a
    pattern's own) also refuses what JSON strings must escape. Quoted literals (an enum's
    values) are left as they are."""
    out, i, quoted = [], 0, False
    while i < len(grammar):
        c = grammar[i]
        if c == "\\" and quoted:
            out.append(grammar[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "[" and not quoted:  # a class, copied whole: a quote inside it opens no literal
            end = i + 1
            while end < len(grammar) and grammar[end] != "]":
                end += 2 if grammar[end] == "\\" else 1
            cls = grammar[i:end + 1]
            out.append("[^" + _NOT_IN_STRINGS + cls[2:] if cls.startswith("[^") else cls)
            i = end + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _remote_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref
        for value in node.values():
            yield from _remote_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _remote_refs(value)
