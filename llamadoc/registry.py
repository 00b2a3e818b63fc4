"""Model names -> local files: resolve, pull from Hugging Face, list, hash.

A name from models.toml maps to files under $LLAMADOC_HOME/models/<name>/; a path
to a .gguf file is used as it is. Downloads go through huggingface_hub, which
resumes, shows progress and reads tokens from its usual places.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamadoc.config import FileSource, ModelSpec, Settings
from llamadoc.errors import DownloadError, ModelError
from llamadoc.ggufinfo import gguf_metadata

Notify = Callable[[str], None]


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # registry name, or the path the user gave
    engine: str
    model_path: Path
    mmproj_path: Path | None = None
    spec: ModelSpec | None = None

    @property
    def max_pixels(self) -> int | None:
        return self.spec.max_pixels if self.spec else None


def folder_name(name: str) -> str:
    """A registry name as a folder name: 'qwen2.5-vl:7b' -> 'qwen2.5-vl-7b'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def source_filename(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def local_path(settings: Settings, spec: ModelSpec, file: FileSource) -> Path:
    if "://" not in file.source:
        return Path(file.source).expanduser()
    return settings.models_dir / folder_name(spec.name) / source_filename(file.source)


def is_present(settings: Settings, spec: ModelSpec) -> bool:
    return all(local_path(settings, spec, f).is_file() for f in spec.files)


def looks_like_path(value: str) -> bool:
    return value.endswith(".gguf") or os.sep in value or value.startswith((".", "~"))


def gguf_architecture(path: Path) -> str:
    arch = gguf_metadata(str(path), ())["general.architecture"]
    if arch is None:
        raise ModelError(f"{path} has no general.architecture: is it a GGUF model?")
    return str(arch)


def resolve(
    settings: Settings,
    model: str | None,
    mmproj: str | None = None,
    pull_missing: bool = False,
    notify: Notify = lambda _m: None,
) -> ResolvedModel:
    """The files for --model/--mmproj (or the default vision model), pulling if asked."""
    name = model or settings.default_vision
    if not name:
        raise ModelError("no model given and models.toml names no default", hint="pass --model")
    if looks_like_path(name) and name not in settings.models:
        path = Path(name).expanduser()
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
    spec = settings.model(name)
    if not is_present(settings, spec):
        if not pull_missing:
            raise ModelError(f"model {name} is not downloaded", hint=f"run: llamadoc models pull {name}")
        notify(f"model {name} is not here yet; downloading it once to {settings.models_dir}")
        pull(settings, spec, notify)
    model_file = spec.file("model")
    assert model_file is not None  # config guarantees a model file
    projector = _mmproj_path(mmproj)
    if projector is None and spec.file("mmproj") is not None:
        projector = local_path(settings, spec, spec.file("mmproj"))  # type: ignore[arg-type]
    return ResolvedModel(
        name=name,
        engine=spec.engine,
        model_path=local_path(settings, spec, model_file),
        mmproj_path=projector,
        spec=spec,
    )


def resolve_guard(settings: Settings, name: str | None, pull_missing: bool, notify: Notify) -> ResolvedModel:
    """The guard model's file: a registry name of kind guard / vision-guard, or a path."""
    name = name or settings.default_guard
    if not name:
        raise ModelError("models.toml names no default guard", hint="pass --guard-model, or --guard off")
    if looks_like_path(name) and name not in settings.models:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"guard model file {path} does not exist")
        engine = "mllama" if gguf_architecture(path) == "mllama" else "llama"
        return ResolvedModel(name=path.name, engine=engine, model_path=path)
    spec = settings.model(name)
    if spec.kind not in ("guard", "vision-guard"):
        raise ModelError(f"{name} is a {spec.kind} model, not a guard", hint="pick a llama-guard model")
    if not is_present(settings, spec):
        if not pull_missing:
            raise ModelError(f"guard model {name} is not downloaded", hint=f"run: llamadoc models pull {name}")
        notify(f"guard model {name} is not here yet; downloading it once to {settings.models_dir}")
        pull(settings, spec, notify)
    model_file = spec.file("model")
    assert model_file is not None
    return ResolvedModel(name=name, engine=spec.engine, model_path=local_path(settings, spec, model_file), spec=spec)


def _mmproj_path(mmproj: str | None) -> Path | None:
    if mmproj is None:
        return None
    path = Path(mmproj).expanduser()
    if not path.is_file():
        raise ModelError(f"projector file {path} does not exist")
    return path


def pull(settings: Settings, spec: ModelSpec, notify: Notify = lambda _m: None) -> list[Path]:
    """Download every file of a model that is not here yet; returns the local paths."""
    paths = []
    for file in spec.files:
        target = local_path(settings, spec, file)
        if not target.is_file():
            if settings.offline:
                raise DownloadError(
                    f"{spec.name}: {target.name} is not downloaded and offline mode is on",
                    hint="unset LLAMADOC_OFFLINE / HF_HUB_OFFLINE to download it",
                )
            _fetch(file.source, target, notify)
        paths.append(target)
    return paths


def _fetch(source: str, target: Path, notify: Notify) -> None:
    scheme, _, rest = source.partition("://")
    if scheme != "hf":
        raise DownloadError(f"cannot download {source}: unsupported source", hint="use hf://owner/repo/file")
    owner, repo, filename = _split_hf(rest, source)
    notify(f"downloading {filename} from huggingface.co/{owner}/{repo}")
    from huggingface_hub import hf_hub_download  # imported here: only pulls need it
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename, local_dir=target.parent)
    except LocalEntryNotFoundError as err:
        raise DownloadError(f"cannot download {source}: no connection ({err})") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = {
            401: "log in with `hf auth login` or set HF_TOKEN",
            403: "accept the model's licence on huggingface.co, then set HF_TOKEN",
            404: "check the source in models.toml",
        }.get(status or 0)
        raise DownloadError(f"cannot download {source}: HTTP {status}", hint=hint) from None
    downloaded = target.parent / filename
    if downloaded != target:
        downloaded.replace(target)


def _split_hf(rest: str, source: str) -> tuple[str, str, str]:
    parts = rest.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise DownloadError(f"bad source {source}", hint="use hf://owner/repo/path/to/file.gguf")
    return parts[0], parts[1], parts[2]


def file_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a (large) model file, cached by path, size and mtime: hashing 5 GB is slow."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache = cache_dir / "file-hashes.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return str(known[key])
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
    known[key] = digest.hexdigest()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    except OSError:
        pass  # a cache we cannot write only costs time
    return known[key]
