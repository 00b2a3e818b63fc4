"""Bring every missing file of a model onto this machine, once; offline mode never touches the network."""

from __future__ import annotations

from pathlib import Path

from llamadoc.config import HfRef, ModelSpec, OllamaRef, Settings, parse_source
from llamadoc.errors import DownloadError, ModelError
from llamadoc.registry import huggingface, ollama
from llamadoc.registry.download import Notify
from llamadoc.registry.locate import LocalFile, locate

OFFLINE_HINT = "unset LLAMADOC_OFFLINE and HF_HUB_OFFLINE to download it, or put its files in place"


def pull(settings: Settings, spec: ModelSpec, notify: Notify = lambda _m: None) -> list[Path]:
    """Download what is missing of ``spec``; returns the local path of each of its files."""
    return [f.path for f in pull_files(settings, spec, notify) if f.path is not None]


def pull_files(settings: Settings, spec: ModelSpec, notify: Notify = lambda _m: None) -> list[LocalFile]:
    files = locate(settings, spec)
    missing = [(f, parse_source(f.source)) for f in files if not f.present]
    for file, ref in missing:
        if isinstance(ref, Path):
            raise ModelError(
                f"{spec.name}: its {file.role} file {ref} does not exist",
                hint=f"fix files.{file.role} in {spec.origin}",
            )
    if missing and settings.offline:
        raise DownloadError(f"model {spec.name} is not downloaded and offline mode is on", hint=OFFLINE_HINT)
    pulled: set[OllamaRef] = set()
    for file, ref in missing:
        if isinstance(ref, HfRef):
            assert file.path is not None  # a Hub file always has its place in llamadoc's folder
            huggingface.fetch(settings, ref, file.path, _pinned(spec, file.role), notify)
        elif isinstance(ref, OllamaRef) and ref not in pulled:
            ollama.pull(settings, ref, notify)
            pulled.add(ref)
    if not missing:
        return files
    files = locate(settings, spec)
    for file in files:
        if not file.present:
            raise ModelError(
                f"{spec.name}: the Ollama manifest of {file.source} has no {file.role} layer",
                hint=f"name the {file.role} file in {spec.origin} with another source",
            )
    return files


def _pinned(spec: ModelSpec, role: str) -> str | None:
    declared = spec.file(role)
    return declared.sha256 if declared else None
