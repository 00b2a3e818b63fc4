"""Looking after downloaded models: delete llamadoc's copies, check files against their sha256.

Files in Ollama's store, the Hugging Face cache or at a user's path are never
deleted: llamadoc only says where they are.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llamadoc.config import HfRef, HfRepoRef, ModelSpec, OllamaRef, Settings, SourceRef, parse_source
from llamadoc.registry import checkpoint, huggingface, ollama
from llamadoc.registry.download import Notify, locked, partial_path
from llamadoc.registry.hashing import fresh_sha256
from llamadoc.registry.locate import HF_CACHE, OLLAMA, USER_PATH, LocalFile, locate, present_origin
from llamadoc.registry.transfer import human_size

_OWNERS = {OLLAMA: "in Ollama's store", HF_CACHE: "in the Hugging Face cache", USER_PATH: "your own file"}


@dataclass
class Removal:
    removed: list[Path] = field(default_factory=list)
    freed: int = 0
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (path, why it stays)


@dataclass(frozen=True)
class FileCheck:
    file: LocalFile
    actual: str
    deleted: bool = False  # a bad copy in llamadoc's folder is deleted, so that a pull fetches it again

    @property
    def ok(self) -> bool | None:
        """True or False against the known digest; None when there is nothing to compare with."""
        return None if self.file.sha256 is None else self.actual == self.file.sha256


def remove(settings: Settings, spec: ModelSpec, notify: Notify = lambda _m: None) -> Removal:
    """Delete llamadoc's own copies of ``spec``'s files (every source), unless another model still uses them."""
    done = Removal()
    users = _refs_in_use(settings, spec)
    for source in spec.origins:
        one = spec.with_origin(source.name)
        for file in locate(settings, one):
            ref = parse_source(file.address)
            if file.shared:
                if file.present and file.path is not None:
                    done.kept.append((file.path, f"it is {_OWNERS[file.place]}, which llamadoc never deletes from"))
            elif ref in users:
                if file.present and file.path is not None:
                    done.kept.append((file.path, f"model {users[ref]} uses it too"))
            elif isinstance(ref, HfRef) and file.path is not None:
                _delete(file.path, _with_sidecars(file.path), done, notify)
            elif isinstance(ref, HfRepoRef):
                for quant in checkpoint.QUANTS:
                    path = checkpoint.gguf_path(settings, ref, quant)
                    _delete(path, [*_with_sidecars(path), path.with_name(path.name + ".part")], done, notify)
                _delete_tree(checkpoint.staging_dir(settings, ref), done)
        for ref in {parse_source(f.address) for f in one.files}:
            if isinstance(ref, OllamaRef) and ref not in users:
                _remove_manifest(settings, ref, done, notify)
    return done


def _with_sidecars(path: Path) -> list[Path]:
    return [path, partial_path(path), huggingface.sidecar_path(path), huggingface.provenance_path(path)]


def _delete_tree(folder: Path, done: Removal) -> None:
    """A checkpoint's download folder: its files count as freed."""
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        if path.is_file():
            done.freed += path.stat().st_size
    shutil.rmtree(folder)
    done.removed.append(folder)


def verify(settings: Settings, spec: ModelSpec, notify: Notify = lambda _m: None) -> list[FileCheck]:
    """Hash every present file of ``spec`` anew and compare it with the digest it must have."""
    checks = []
    here = present_origin(settings, spec)
    for file in locate(settings, spec.with_origin(here.name) if here else spec):
        if not file.present or file.path is None:
            continue
        notify(f"checking {file.path.name} ({human_size(file.size)})")
        actual = fresh_sha256(file.path, settings.cache_dir)
        deleted = False
        if file.sha256 is not None and actual != file.sha256 and not file.shared:
            with locked(file.path, f"waiting for another llamadoc process using {file.path.name}", notify):
                file.path.unlink(missing_ok=True)
            deleted = True
        checks.append(FileCheck(file, actual, deleted))
    return checks


def _refs_in_use(settings: Settings, spec: ModelSpec) -> dict[SourceRef, str]:
    """Sources of ``spec`` that other models name too: source -> one such model."""
    mine = {parse_source(f.address) for source in spec.origins for f in source.files}
    return {
        ref: other.name
        for other in settings.models.values()
        if other.name != spec.name
        for ref in (parse_source(f.address) for source in other.origins for f in source.files)
        if ref in mine
    }


def _delete(target: Path, paths: list[Path], done: Removal, notify: Notify) -> None:
    with locked(target, f"waiting for another llamadoc process using {target.name}", notify):
        for path in paths:
            if path.is_file():
                done.freed += path.stat().st_size
                path.unlink()
                done.removed.append(path)


def _remove_manifest(settings: Settings, ref: OllamaRef, done: Removal, notify: Notify) -> None:
    store = ollama.own_store(settings)
    path = store.manifest_path(ollama.registry_host(settings), ref)
    manifest = store.read(ollama.registry_host(settings), ref)
    if manifest is None:
        return
    path.unlink()
    done.removed.append(path)
    # Blobs are shared between manifests by digest: keep those another manifest still names.
    still_named = {blob.digest for other in store.manifests() for blob in other.blobs}
    for blob in manifest.blobs:
        if blob.digest not in still_named:
            target = store.blob_path(blob)
            _delete(target, [target, partial_path(target)], done, notify)
