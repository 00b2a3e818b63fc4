"""The Models seam: what a Reader runs its batches on. Three implementations: this machine's
engines (models.local), a running `llamadoc serve` (models.remote), and the server's resident
set (server.resident). Each loads on first need, holds, unloads and describes its models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llamadoc.config import Settings
from llamadoc.engines.base import VisionEngine
from llamadoc.errors import UsageError
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.registry import ResolvedModel
from llamadoc.results import ModelInfo


@dataclass(frozen=True)
class ModelSettings:
    """How a run's models are found and loaded. Frozen and picklable, so another process (a Ray
    worker) loads models equal to these; they check themselves with the CLI's messages."""

    settings: Settings
    model: str | None = None  # a name from models.toml, a .gguf path or an address; None: the default
    mmproj: str | None = None
    gpu_layers: int = -1  # -1: all layers on the GPU when there is one
    ctx: int = 0  # 0: sized from the page, the prompt and the answer's budget
    threads: int | None = None
    verbose: bool = False
    pull: bool = True  # download a missing model (as the registry allows)
    guard: GuardPolicy = field(default_factory=GuardPolicy)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UsageError("--threads must be at least 1")
        if self.gpu_layers < -1:
            raise UsageError("--gpu-layers must be -1 (all) or a number of layers")
        if self.ctx < 0:
            raise UsageError("--ctx must be 0 (sized from the page) or a number of tokens")


@dataclass(frozen=True)
class EngineNeeds:
    """What a run needs the vision engine's context to hold, known before it loads: a page of
    the run's pixel budget, a prompt (a schema can make it thousands of tokens) and an answer
    of the run's --max-tokens."""

    prompt_tokens: int = 2048
    max_tokens: int = 1024
    max_pixels: int | None = None  # None: the model's own budget (models.toml)


class Models(Protocol):
    """A run's vision model and guard: resolved on first need, loaded on first use, then held."""

    @property
    def settings(self) -> Settings: ...

    @property
    def policy(self) -> GuardPolicy:
        """The guard policy the models screen under (the guard model's name is part of it)."""
        ...

    def resolve(self) -> ResolvedModel:
        """The vision model's files (pulled when missing and allowed): a missing model fails here."""
        ...

    def sha256(self) -> str: ...

    def vision_engine(self, needs: EngineNeeds) -> VisionEngine:
        """The vision engine, loaded on the first call (sized for ``needs``) and held."""
        ...

    def guard(self) -> Guard | None:
        """The guard under the policy (None when it is off); resolved now, loaded on first use."""
        ...

    def info(self) -> ModelInfo:
        """What each result records of the model; its device once it has loaded."""
        ...

    def close(self) -> None:
        """Unload the engines; a later need loads them again."""
        ...


def describe(resolved: ResolvedModel, sha256: str, engine: VisionEngine | None) -> ModelInfo:
    """A result's record of the model, whichever implementation holds it."""
    spec = resolved.spec
    return ModelInfo(
        name=resolved.name,
        path=str(resolved.model_path),
        engine=resolved.engine,
        sha256=sha256,
        quantisation=spec.quantisation if spec else None,
        source=resolved.address,
        revision=resolved.revision,
        mmproj=str(resolved.mmproj_path) if resolved.mmproj_path else None,
        gpu_layers=engine.gpu_layers if engine is not None else 0,
        device=engine.device if engine is not None else None,
    )
