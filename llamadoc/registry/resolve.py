"""--model / --mmproj (a registry name or a path) -> the files an engine loads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llamadoc.config import ModelSpec, Settings
from llamadoc.errors import ModelError
from llamadoc.gguf_header import gguf_architecture
from llamadoc.registry.download import Notify
from llamadoc.registry.locate import is_present, locate
from llamadoc.registry.pull import pull_files


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # registry name, or the path the user gave
    engine: str
    model_path: Path
    mmproj_path: Path | None = None
    spec: ModelSpec | None = None
    # Files an Ollama manifest brings beside the model ("template", "params"): for checks, not for engines.
    extras: Mapping[str, Path] = field(default_factory=dict)

    @property
    def max_pixels(self) -> int | None:
        return self.spec.max_pixels if self.spec else None


def looks_like_path(value: str) -> bool:
    if "://" in value:
        return False  # a source address: models.toml gives it a name
    return value.endswith(".gguf") or os.sep in value or "/" in value or value.startswith((".", "~"))


def resolve(
    settings: Settings,
    model: str | None,
    mmproj: str | None = None,
    pull_missing: bool = False,
    notify: Notify = lambda _m: None,
) -> ResolvedModel:
    """The files for --model/--mmproj (or the default vision model), pulling them if asked."""
    name = model or settings.default_vision
    if not name:
        raise ModelError("no model given and models.toml names no default", hint="pass --model")
    if name not in settings.models and looks_like_path(name):
        return _from_path(Path(name).expanduser(), mmproj)
    spec = settings.model(name)
    paths = _local_files(settings, spec, "model", pull_missing, notify)
    projector = _mmproj_path(mmproj) or paths.get("mmproj")
    if spec.engine == "mtmd" and projector is None:
        raise ModelError(
            f"model {name} has no vision projector (engine mtmd needs one)",
            hint=f"add files.mmproj to {spec.origin}, or pass --mmproj PATH",
        )
    return ResolvedModel(
        name=name,
        engine=spec.engine,
        model_path=paths["model"],
        mmproj_path=projector,
        spec=spec,
        extras={role: path for role, path in paths.items() if role not in ("model", "mmproj")},
    )


def resolve_guard(settings: Settings, name: str | None, pull_missing: bool, notify: Notify) -> ResolvedModel:
    """The guard model's file: a registry name of kind guard / vision-guard, or a path."""
    name = name or settings.default_guard
    if not name:
        raise ModelError("models.toml names no default guard", hint="pass --guard-model, or --guard off")
    if name not in settings.models and looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"guard model file {path} does not exist")
        engine = "mllama" if gguf_architecture(path) == "mllama" else "llama"
        return ResolvedModel(name=path.name, engine=engine, model_path=path)
    spec = settings.model(name)
    if spec.kind not in ("guard", "vision-guard"):
        raise ModelError(f"{name} is a {spec.kind} model, not a guard", hint="pick a llama-guard model")
    paths = _local_files(settings, spec, "guard model", pull_missing, notify)
    return ResolvedModel(name=name, engine=spec.engine, model_path=paths["model"], spec=spec)


def _local_files(settings: Settings, spec: ModelSpec, what: str, pull_missing: bool, notify: Notify) -> dict[str, Path]:
    """role -> path of a registry model's files, pulled first when missing and asked to."""
    if is_present(settings, spec):
        files = locate(settings, spec)
    elif pull_missing:
        notify(f"{what} {spec.name} is not here yet; downloading it once into {settings.models_dir}")
        files = pull_files(settings, spec, notify)
    else:
        raise ModelError(f"{what} {spec.name} is not downloaded", hint=f"run: llamadoc models pull {spec.name}")
    return {f.role: f.path for f in files if f.present and f.path is not None}


def _from_path(path: Path, mmproj: str | None) -> ResolvedModel:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    arch = gguf_architecture(path)
    engine = "mllama" if arch == "mllama" else "mtmd"
    projector = _mmproj_path(mmproj)
    if engine == "mtmd" and projector is None:
        raise ModelError(
            f"{path} is a '{arch}' model and needs its vision projector",
            hint="pass --mmproj PATH (the mmproj-*.gguf published with it)",
        )
    return ResolvedModel(name=str(path), engine=engine, model_path=path, mmproj_path=projector)


def _mmproj_path(mmproj: str | None) -> Path | None:
    if mmproj is None:
        return None
    path = Path(mmproj).expanduser()
    if not path.is_file():
        raise ModelError(f"projector file {path} does not exist")
    return path
