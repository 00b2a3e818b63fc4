"""Where each file of a model is, or where a pull would put it; reads the disk, never the network.

A file can be in llamadoc's own folder, in an Ollama installation's store or in the
Hugging Face cache (both used in place), or at a path the user named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamadoc.config import HfRef, HfRepoRef, ModelSpec, OllamaRef, Origin, Settings
from llamadoc.registry import checkpoint, huggingface, ollama
from llamadoc.registry.download import partial_path

# Where a file lives, as `models list` and `models rm` tell it.
LLAMADOC, OLLAMA, HF_CACHE, USER_PATH = "llamadoc", "ollama", "huggingface cache", "path"


@dataclass(frozen=True)
class LocalFile:
    role: str  # model, mmproj, template, params
    address: str  # as models.toml names it
    path: Path | None  # where it is, or where a pull puts it; None: an Ollama layer known only from its manifest
    present: bool
    place: str  # LLAMADOC, OLLAMA, HF_CACHE or USER_PATH
    sha256: str | None = None  # the digest it must have, when known
    revision: str | None = None  # the source's commit (Hub) or manifest digest (Ollama), when known
    staging: Path | None = None  # a checkpoint's download folder, before it is converted into ``path``

    @property
    def shared(self) -> bool:
        """Another tool's file or the user's own: llamadoc never deletes it."""
        return self.place != LLAMADOC

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.present and self.path else 0

    @property
    def partial(self) -> int:
        """Bytes of an interrupted download, kept for the next pull to resume."""
        if self.present or self.path is None:
            return 0
        if self.staging is not None:
            return sum(p.stat().st_size for p in self.staging.rglob("*") if p.is_file()) if self.staging.is_dir() else 0
        try:
            return partial_path(self.path).stat().st_size
        except OSError:
            return 0


def locate(settings: Settings, spec: ModelSpec, quant: str | None = None) -> list[LocalFile]:
    """Every file of ``spec``'s first source, plus what an Ollama manifest adds (projector, template, params).

    ``quant``: for a checkpoint, the quantisation wanted (the entry's by default; another
    one already converted is taken when that one is not here).
    """
    found: list[LocalFile] = []
    manifests: dict[OllamaRef, tuple[ollama.OllamaStore, ollama.Manifest] | None] = {}
    for file in spec.files:
        ref = file.ref
        if isinstance(ref, Path):
            found.append(LocalFile(file.role, file.address, ref, ref.is_file(), USER_PATH, file.sha256))
        elif isinstance(ref, HfRef):
            found.append(_hf_file(settings, ref, file.role, file.address, file.sha256))
        elif isinstance(ref, HfRepoRef):
            found.append(_converted(settings, ref, file.role, file.address, quant, spec.quantisation))
        elif isinstance(ref, OllamaRef):
            if ref not in manifests:
                manifests[ref] = ollama.find(settings, ref)
            found.append(_ollama_file(manifests[ref], file.role, file.address, file.sha256))
    model = spec.file("model")
    pulled = manifests.get(model.ref) if model and isinstance(model.ref, OllamaRef) else None
    if model and pulled:
        store, manifest = pulled
        for kind, role in ollama.LAYER_ROLES.items():
            layer = manifest.layer(kind)
            if layer and not any(f.role == role for f in found):
                found.append(LocalFile(role, model.address, store.blob_path(layer), True, _place(store), layer.hex,
                                       manifest.digest))
    return found


def complete(settings: Settings, spec: ModelSpec, quant: str | None = None) -> bool:
    """Whether every file models.toml names for ``spec``'s first source is on this machine."""
    roles = {f.role for f in spec.files}
    return all(f.present for f in locate(settings, spec, quant) if f.role in roles)


def present_origin(settings: Settings, spec: ModelSpec, quant: str | None = None) -> Origin | None:
    """The first of ``spec``'s sources whose files are all here."""
    for candidate in spec.origins:
        if complete(settings, spec.with_origin(candidate.name), quant):
            return candidate
    return None


def is_present(settings: Settings, spec: ModelSpec) -> bool:
    """Whether the files of one of ``spec``'s sources are all on this machine."""
    return present_origin(settings, spec) is not None


def _hf_file(settings: Settings, ref: HfRef, role: str, source: str, pinned: str | None) -> LocalFile:
    own = huggingface.store_path(settings, ref)
    if own.is_file():
        return LocalFile(role, source, own, True, LLAMADOC, pinned or huggingface.known_sha256(own),
                         huggingface.revision(own))
    cached = huggingface.cached_path(settings, ref)
    if cached is not None:
        return LocalFile(role, source, cached, True, HF_CACHE, pinned or huggingface.known_sha256(cached),
                         huggingface.revision(cached))
    return LocalFile(role, source, own, False, LLAMADOC, pinned)


def _converted(
    settings: Settings, ref: HfRepoRef, role: str, source: str, quant: str | None, default: str | None
) -> LocalFile:
    # A quantisation asked for is that one; otherwise the entry's, or any other already converted.
    path = checkpoint.gguf_path(settings, ref, quant.upper()) if quant else checkpoint.find(settings, ref, default)
    staging = checkpoint.staging_dir(settings, ref)
    if not path.is_file():
        return LocalFile(role, source, path, False, LLAMADOC, staging=staging)
    return LocalFile(role, source, path, True, LLAMADOC, huggingface.known_sha256(path), huggingface.revision(path),
                     staging=staging)


def _ollama_file(
    found: tuple[ollama.OllamaStore, ollama.Manifest] | None, role: str, source: str, pinned: str | None
) -> LocalFile:
    if found is None:
        return LocalFile(role, source, None, False, LLAMADOC, pinned)
    store, manifest = found
    layer = manifest.layer("model" if role == "model" else "projector")
    if layer is None:
        return LocalFile(role, source, None, False, _place(store), pinned)
    return LocalFile(role, source, store.blob_path(layer), True, _place(store), pinned or layer.hex, manifest.digest)


def _place(store: ollama.OllamaStore) -> str:
    return OLLAMA if store.shared else LLAMADOC
