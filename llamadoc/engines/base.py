"""The engine protocol every backend implements, with its request and response types.

The pipeline reads an engine's capabilities (attributes) before it calls it, so an
engine never has to reject a request shape it declared it cannot take.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Sampling:
    """Greedy by default: documents want the same answer every time."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model; shared by every engine."""

    model_path: str
    mmproj_path: str | None = None
    gpu_layers: int = -1  # -1: all layers on the GPU when a GPU backend is present
    n_ctx: int = 0  # 0: sized by the engine from image tokens, prompt and max_tokens
    max_tokens: int = 1024  # the largest completion the context must leave room for
    prompt_tokens: int = 2048  # room for instructions, a schema and the chat template
    threads: int | None = None
    flash_attn: bool = True
    verbose: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    images: tuple[Image, ...] = ()
    system: str | None = None
    schema: dict[str, Any] | None = None  # JSON Schema: decoding is constrained to it
    max_tokens: int = 1024
    sampling: Sampling = Sampling()


@dataclass
class GenerationResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "stop" | "length"
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Per completion token: its bytes (they make up ``text``) and the natural log of the probability
    # the model gave it, over the whole vocabulary at temperature 1, before a grammar narrowed the
    # choice. Empty when the engine cannot say.
    logprobs: list[tuple[bytes, float]] = field(default_factory=list)


@runtime_checkable
class VisionEngine(Protocol):
    """Answers a prompt about page images."""

    name: str  # engine id as in models.toml: "mtmd", "mllama"
    max_images: int  # images one request may carry
    max_batch: int  # requests generate_batch decodes together (1: one at a time)
    supports_schema: bool  # constrained JSON decoding
    gpu_layers: int  # layers actually offloaded
    device: str  # "CPU", "CUDA0 (NVIDIA H100)", ...

    def generate(self, request: GenerationRequest) -> GenerationResponse: ...

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        """Several requests at once: up to max_batch decode together, reading the
        weights once per step for all of them."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class JudgeRequest:
    """A Llama Guard prompt as llamadoc.guard renders it, and how its verdict is read: the
    engine forces ``answer_prefix``, reads P(``unsafe_word``) at the next token, then decodes
    at most ``max_tokens`` under ``grammar`` (GBNF)."""

    prompt: str
    answer_prefix: str
    grammar: str
    max_tokens: int
    unsafe_word: str
    image: Image | None = None


@dataclass(frozen=True)
class GuardOutput:
    """What a guard engine returns for one prompt."""

    text: str  # the verdict it generated, after the request's answer_prefix
    p_unsafe: float | None  # P(first token of "unsafe") where the verdict starts


@runtime_checkable
class GuardEngine(Protocol):
    """Runs a Llama Guard prompt (built by llamadoc.guard) and reports the verdict text."""

    model_name: str
    sees_images: bool  # an image-aware guard (Llama Guard 3 11B Vision)
    n_ctx: int

    def count_tokens(self, text: str) -> int: ...

    def split(self, text: str, max_tokens: int) -> list[str]:
        """``text`` in pieces of at most ``max_tokens`` tokens."""
        ...

    def judge(self, request: JudgeRequest) -> GuardOutput: ...

    def close(self) -> None: ...
