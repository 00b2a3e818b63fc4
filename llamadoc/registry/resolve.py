"""--model / --mmproj / --guard-model (a registry name, an address or a path) -> the files an engine loads."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from llamadoc.config import HfRef, ModelSpec, OllamaRef, Settings, address_spec, parse_source
from llamadoc.errors import ModelError
from llamadoc.gguf_header import gguf_architecture
from llamadoc.registry import checkpoint, known_blobs, ollama
from llamadoc.registry.download import Notify
from llamadoc.registry.hashing import known_sha256
from llamadoc.registry.locate import LocalFile, present_origin
from llamadoc.registry.pull import pull_files

GUARD_KINDS = ("guard", "vision-guard")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # registry name, the address or the path, as the user gave it
    engine: str
    model_path: Path
    mmproj_path: Path | None = None
    spec: ModelSpec | None = None
    # Files an Ollama manifest brings beside the model ("template", "params"): for checks, not for engines.
    extras: Mapping[str, Path] = field(default_factory=dict)
    address: str | None = None  # where the model file came from: hf://..., ollama://..., or None for a path
    revision: str | None = None  # the source's commit (Hub) or manifest digest (Ollama), when known

    @property
    def max_pixels(self) -> int | None:
        return self.spec.max_pixels if self.spec else None


def looks_like_path(value: str) -> bool:
    if "://" in value:
        return False  # a source address
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
    projector = _projector(settings, mmproj, pull_missing, notify)
    if name not in settings.models and looks_like_path(name):
        return _from_path(settings, Path(name).expanduser(), projector)
    spec = settings.model(name)
    if spec.address:
        spec = address_spec(name, kind="vision")
    files = _local_files(settings, spec, "model", pull_missing, notify, projector is not None)
    paths = {f.role: f.path for f in files if f.present and f.path is not None}
    model_file = next(f for f in files if f.role == "model")
    projector = projector or paths.get("mmproj")
    engine = spec.engine if not spec.address else _vision_engine(name, paths["model"], projector)
    if engine == "mtmd" and projector is None:
        raise ModelError(
            f"model {name} has no vision projector (engine mtmd needs one)",
            hint=f"add files.mmproj to {spec.defined_in}, or pass --mmproj PATH",
        )
    if engine == "mllama":
        _refuse_known(settings, model_file, name)
    return ResolvedModel(
        name=name,
        engine=engine,
        model_path=paths["model"],
        mmproj_path=projector,
        spec=_as_loaded(spec, engine, model_file),
        extras={role: path for role, path in paths.items() if role not in ("model", "mmproj")},
        address=model_file.address,
        revision=model_file.revision,
    )


def resolve_guard(settings: Settings, name: str | None, pull_missing: bool, notify: Notify) -> ResolvedModel:
    """The guard model's file: a registry name of kind guard / vision-guard, an address, or a path."""
    name = name or settings.default_guard
    if not name:
        raise ModelError("models.toml names no default guard", hint="pass --guard-model, or --guard off")
    if name not in settings.models and looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"guard model file {path} does not exist")
        engine = "mllama" if gguf_architecture(path) == "mllama" else "llama"
        if engine == "mllama":
            known_blobs.check(known_sha256(path, settings.cache_dir), str(path))
        return ResolvedModel(name=path.name, engine=engine, model_path=path)
    spec = settings.model(name)
    if spec.address:
        spec = address_spec(name, kind="guard")
    elif spec.kind not in GUARD_KINDS:
        raise ModelError(f"{name} is a {spec.kind} model, not a guard", hint="pick a llama-guard model")
    files = _local_files(settings, spec, "guard model", pull_missing, notify, False)
    model_file = next(f for f in files if f.role == "model")
    assert model_file.path is not None  # _local_files returns present files
    engine = spec.engine
    if spec.address:
        engine = "mllama" if gguf_architecture(model_file.path) == "mllama" else "llama"
    if engine == "mllama":
        _refuse_known(settings, model_file, name)
    return ResolvedModel(
        name=name,
        engine=engine,
        model_path=model_file.path,
        spec=_as_loaded(spec, engine, model_file),
        address=model_file.address,
        revision=model_file.revision,
    )


def _local_files(
    settings: Settings, spec: ModelSpec, what: str, pull_missing: bool, notify: Notify, projector_named: bool
) -> list[LocalFile]:
    """A registry model's files from the first source that has them here, pulled first when asked to."""
    here = present_origin(settings, spec)
    if here is not None:
        files = pull_files(settings, spec.with_origin(here.name))
    elif pull_missing:
        converts = spec.origins[0].converts
        doing = "downloading and converting it once" if converts else "downloading it once"
        if not settings.offline:  # offline, pull_files says why it cannot
            notify(f"{what} {spec.name} is not here yet; {doing} into {settings.models_dir}")
        files = pull_files(settings, spec, notify, projector_named=projector_named)
    else:
        raise ModelError(f"{what} {spec.name} is not downloaded", hint=f"run: llamadoc models pull {spec.name}")
    _check_ollama_layout(settings, spec, files, projector_named)
    return [f for f in files if f.present and f.path is not None]


def _check_ollama_layout(settings: Settings, spec: ModelSpec, files: list[LocalFile], projector_named: bool) -> None:
    """An Ollama model already on disk (llamadoc's store or Ollama's) passes the same check as a pull."""
    model = next((f for f in files if f.role == "model"), None)
    ref = parse_source(model.address) if model else None
    if not isinstance(ref, OllamaRef):
        return
    found = ollama.find(settings, ref)
    if found is not None:
        store, manifest = found
        expect = ollama.Expectation(spec.engine, spec.kind, projector_named or spec.file("mmproj") is not None)
        expect.check(ref, manifest, ollama.read_config(store, manifest))


def _vision_engine(name: str, model: Path, projector: Path | None) -> str:
    """The engine an address's file needs: mllama by its architecture, libmtmd with a projector."""
    arch = gguf_architecture(model)
    if arch == "mllama":
        if projector is not None:
            raise ModelError(f"{name} is Llama 3.2 Vision (one file, the encoder inside): drop --mmproj")
        return "mllama"
    if projector is None:
        raise ModelError(
            f"{name} is a '{arch}' model and needs its vision projector",
            hint="pass --mmproj PATH or --mmproj hf://OWNER/REPO/mmproj-FILE.gguf (published beside it)",
        )
    return "mtmd"


def _refuse_known(settings: Settings, file: LocalFile, label: str) -> None:
    digest = file.sha256 or (known_sha256(file.path, settings.cache_dir) if file.path else None)
    known_blobs.check(digest, label)


def _as_loaded(spec: ModelSpec, engine: str, model: LocalFile) -> ModelSpec:
    """The entry as what was found: its engine, and the quantisation a converted file really has."""
    quant = checkpoint.quant_of(model.path) if model.staging is not None and model.path else None
    return replace(spec, engine=engine, quantisation=quant or spec.quantisation)


def _from_path(settings: Settings, path: Path, projector: Path | None) -> ResolvedModel:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    arch = gguf_architecture(path)
    engine = "mllama" if arch == "mllama" else "mtmd"
    if engine == "mtmd" and projector is None:
        raise ModelError(
            f"{path} is a '{arch}' model and needs its vision projector",
            hint="pass --mmproj PATH (the mmproj-*.gguf published with it)",
        )
    if engine == "mllama":
        known_blobs.check(known_sha256(path, settings.cache_dir), str(path))
    return ResolvedModel(name=str(path), engine=engine, model_path=path, mmproj_path=projector)


def _projector(settings: Settings, mmproj: str | None, pull_missing: bool, notify: Notify) -> Path | None:
    """--mmproj: a path, or an hf:// address of a projector file, pulled like a model's."""
    if mmproj is None:
        return None
    if "://" not in mmproj:
        path = Path(mmproj).expanduser()
        if not path.is_file():
            raise ModelError(f"projector file {path} does not exist")
        return path
    try:
        ref = parse_source(mmproj)
    except ValueError as err:
        raise ModelError(f"--mmproj {mmproj!r} is not an address", hint=str(err)) from None
    if not isinstance(ref, HfRef):
        raise ModelError(
            f"--mmproj {mmproj!r}: a projector is one file", hint="use hf://OWNER/REPO/FILE.gguf or a path"
        )
    spec = address_spec(mmproj)
    files = _local_files(settings, spec, "projector", pull_missing, notify, False)
    found = files[0].path
    assert found is not None  # _local_files returns present files
    return found
