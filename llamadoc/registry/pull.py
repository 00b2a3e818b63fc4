"""Bring every missing file of a model onto this machine, once; offline mode never touches the network.

A model's sources are tried in order: the next one only when the one before answers
404 (the registry dropped the model), never after a network error, which may pass.
"""

from __future__ import annotations

from pathlib import Path

from llamadoc.config import HfRef, HfRepoRef, ModelSpec, OllamaRef, Settings, parse_source
from llamadoc.errors import ModelError
from llamadoc.registry import checkpoint, huggingface, ollama
from llamadoc.registry.download import NotFound, Notify
from llamadoc.registry.locate import LocalFile, complete, locate, present_origin

OFFLINE_HINT = "unset LLAMADOC_OFFLINE and HF_HUB_OFFLINE to download it, or put its files in place"


def pull(
    settings: Settings,
    spec: ModelSpec,
    notify: Notify = lambda _m: None,
    *,
    source: str | None = None,
    quant: str | None = None,
    keep_source: bool = False,
) -> list[Path]:
    """Download what is missing of ``spec``; returns the local path of each of its files."""
    files = pull_files(settings, spec, notify, source=source, quant=quant, keep_source=keep_source)
    return [f.path for f in files if f.path is not None]


def pull_files(
    settings: Settings,
    spec: ModelSpec,
    notify: Notify = lambda _m: None,
    *,
    source: str | None = None,
    quant: str | None = None,
    keep_source: bool = False,
    projector_named: bool = False,
) -> list[LocalFile]:
    """The files of the source that is here, or of the first source that can be pulled.

    ``source`` picks one by name; ``quant`` the quantisation a checkpoint is converted to;
    ``projector_named``: the caller brings a projector (--mmproj), so a manifest need not.
    """
    order = [spec.origin(source)] if source else list(spec.origins)
    if source is None:
        here = present_origin(settings, spec, quant)
        if here is not None:
            return locate(settings, spec.with_origin(here.name), quant)
    elif complete(settings, spec.with_origin(source), quant):
        return locate(settings, spec.with_origin(source), quant)
    if settings.offline:
        raise ModelError(f"model {spec.name} is not downloaded and offline mode is on", hint=OFFLINE_HINT)
    for i, candidate in enumerate(order):
        one = spec.with_origin(candidate.name)
        try:
            return _pull_source(settings, one, notify, quant, keep_source, projector_named)
        except NotFound as err:
            if i + 1 == len(order):
                raise
            notify(f"{err.message}; trying the next source of {spec.name}: {order[i + 1].name}")
    raise AssertionError("a model has at least one source")  # config.py refuses a model without one


def _pull_source(
    settings: Settings, spec: ModelSpec, notify: Notify, quant: str | None, keep_source: bool, projector_named: bool
) -> list[LocalFile]:
    files = locate(settings, spec, quant)
    missing = [(f, parse_source(f.address)) for f in files if not f.present]
    for file, ref in missing:
        if isinstance(ref, Path):
            raise ModelError(
                f"{spec.name}: its {file.role} file {ref} does not exist",
                hint=f"fix files.{file.role} in {spec.defined_in}",
            )
    expect = ollama.Expectation(spec.engine, spec.kind, projector_named or spec.file("mmproj") is not None)
    pulled: set[OllamaRef] = set()
    for file, ref in missing:
        if isinstance(ref, HfRef):
            assert file.path is not None  # a Hub file always has its place in llamadoc's folder
            huggingface.fetch(settings, ref, file.path, _pinned(spec, file.role), notify)
        elif isinstance(ref, HfRepoRef):
            checkpoint.pull(settings, ref, quant or spec.quantisation or checkpoint.QUANTS[0], keep_source, notify)
        elif isinstance(ref, OllamaRef) and ref not in pulled:
            ollama.pull(settings, ref, notify, expect)
            pulled.add(ref)
    if not missing:
        return files
    files = locate(settings, spec, quant)
    for file in files:
        if not file.present:
            raise ModelError(
                f"{spec.name}: the Ollama manifest of {file.address} has no {file.role} layer",
                hint=f"name the {file.role} file in {spec.defined_in} with another source",
            )
    return files


def _pinned(spec: ModelSpec, role: str) -> str | None:
    declared = spec.file(role)
    return declared.sha256 if declared else None
