"""Models from an Ollama registry, kept in Ollama's own folder layout.

A model is a manifest (JSON listing layers by media type, sha256 digest and size) and
one blob per layer, fetched from the registry's distribution API. llamadoc keeps its
downloads in the layout Ollama uses (manifests/<host>/<namespace>/<name>/<tag>,
blobs/sha256-<hex>), so a blob is found the same way wherever it lives, and the blobs
of an existing Ollama installation are used in place, never copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from llamadoc.config import ENGINE_FROM_FILE, OllamaRef, Settings
from llamadoc.errors import DownloadError, ModelError
from llamadoc.registry import download, known_blobs
from llamadoc.registry.download import Notify

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_MEDIA_PREFIX = "application/vnd.ollama.image."
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# The layers an engine or a check reads, under the role llamadoc gives them. Ollama's
# current Llama 3.2 Vision has its projector inside the model layer; older manifests
# carry a separate projector layer.
LAYER_ROLES = {"model": "model", "projector": "mmproj", "template": "template", "params": "params"}


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int

    @property
    def kind(self) -> str:
        """'model', 'projector', 'template', 'params', 'license', ... ('config' for the config blob)."""
        base = self.media_type.split(";", 1)[0].strip()
        return base[len(_MEDIA_PREFIX):] if base.startswith(_MEDIA_PREFIX) else "config"

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]


@dataclass(frozen=True)
class Manifest:
    config: Layer | None
    layers: tuple[Layer, ...]
    raw: bytes  # stored as received, as Ollama does

    @property
    def blobs(self) -> tuple[Layer, ...]:
        return ((self.config,) if self.config else ()) + self.layers

    def layer(self, kind: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.kind == kind), None)

    @property
    def digest(self) -> str:
        """sha256:<hex> of the manifest as stored: what Ollama shows as a model's ID."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True)
class Expectation:
    """What the engine that will load a model needs of its manifest, checked before any blob is fetched."""

    engine: str  # mllama, mtmd, llama, or ENGINE_FROM_FILE for an address
    kind: str  # vision, guard, vision-guard, or "" when not known (models pull ADDRESS)
    projector_named: bool = False  # files.mmproj or --mmproj supplies one

    def check(self, ref: OllamaRef, manifest: Manifest, config: dict[str, Any]) -> None:
        """Refuse, in one line, a manifest whose layers this engine cannot load."""
        label = f"ollama://{ref.namespace}/{ref.name}:{ref.tag}"
        model, projector = manifest.layer("model"), manifest.layer("projector")
        if model is None:
            raise ModelError(f"{label} has no model layer, so nothing llamadoc can load", hint="check the name and tag")
        known_blobs.check(model.hex, label)
        families = config.get("model_families") or [config.get("model_family")]
        families = [f for f in families if isinstance(f, str)]
        mllama = "mllama" in families
        if mllama and projector is not None:
            # Ollama itself refuses this layout since 0.7 (server/routes.go: mllama with projectors).
            raise ModelError(
                f"{label} is Ollama's old two-file Llama 3.2 Vision (a model and a projector layer, Ollama 0.4-0.6), "
                "which llamadoc's mllama engine does not read; the registry should serve the one-file version "
                "(check LLAMADOC_OLLAMA_REGISTRY), or use Meta's checkpoint with --source meta"
            )
        if self.engine == "mllama" and families and not mllama:
            raise ModelError(
                f"{label} is a '{families[0]}' model, not Llama 3.2 Vision ('mllama')",
                hint='fix its engine in models.toml (mtmd for a model with a projector, llama for a text guard)',
            )
        wants_projector = self.engine == "mtmd" or (self.engine == ENGINE_FROM_FILE and self.kind == "vision")
        if wants_projector and not mllama and families and projector is None and not self.projector_named:
            raise ModelError(
                f"{label} has no projector layer: as '{families[0]}' it is a text model to llama.cpp "
                "(Ollama's newer vision models keep the encoder inside the model, which libmtmd cannot read)",
                hint="pick a model with a projector layer, or pass --mmproj PATH",
            )


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw``; ValueError says what is wrong with it."""
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ValueError("no list of layers")
    config = _layer(data["config"]) if isinstance(data.get("config"), dict) else None
    return Manifest(config=config, layers=tuple(_layer(item) for item in data["layers"]), raw=raw)


def _layer(item: object) -> Layer:
    if not isinstance(item, dict):
        raise ValueError("a layer is not an object")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"a layer has no media type or no sha256 digest: {item}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"layer {digest} has no size")
    return Layer(media_type=media_type, digest=digest, size=size)


@dataclass(frozen=True)
class OllamaStore:
    """A folder in Ollama's layout: llamadoc's own, or an Ollama installation's (shared)."""

    root: Path
    shared: bool  # Ollama's own: llamadoc reads it and never writes or deletes in it

    def manifest_path(self, host: str, ref: OllamaRef) -> Path:
        return self.root / "manifests" / host / ref.namespace / ref.name / ref.tag

    def blob_path(self, layer: Layer) -> Path:
        return self.root / "blobs" / f"sha256-{layer.hex}"

    def read(self, host: str, ref: OllamaRef) -> Manifest | None:
        try:
            return parse_manifest(self.manifest_path(host, ref).read_bytes())
        except (OSError, ValueError):
            return None  # absent, or unreadable: either way not a model llamadoc can use here

    def has(self, layer: Layer) -> bool:
        try:
            return self.blob_path(layer).stat().st_size == layer.size
        except OSError:
            return False

    def manifests(self) -> list[Manifest]:
        """Every readable manifest in the store."""
        found = []
        for path in (self.root / "manifests").rglob("*"):
            if path.is_file():
                try:
                    found.append(parse_manifest(path.read_bytes()))
                except (OSError, ValueError):
                    continue
        return found


def registry_host(settings: Settings) -> str:
    """The folder Ollama names a registry's manifests by: registry.ollama.ai by default."""
    return urlsplit(settings.ollama_registry).netloc


def own_store(settings: Settings) -> OllamaStore:
    return OllamaStore(settings.models_dir / "ollama", shared=False)


def stores(settings: Settings) -> list[OllamaStore]:
    return [own_store(settings)] + [OllamaStore(root, shared=True) for root in settings.ollama_stores if root.is_dir()]


def find(settings: Settings, ref: OllamaRef) -> tuple[OllamaStore, Manifest] | None:
    """The first store holding ``ref`` with every layer llamadoc reads; never touches the network."""
    host = registry_host(settings)
    for store in stores(settings):
        manifest = store.read(host, ref)
        if manifest and all(store.has(layer) for layer in manifest.layers if layer.kind in LAYER_ROLES):
            return store, manifest
    return None


def read_config(store: OllamaStore, manifest: Manifest) -> dict[str, Any]:
    """The manifest's config blob (model_family, file_type, ...), or {} when it is absent or not JSON."""
    if manifest.config is None:
        return {}
    try:
        data = json.loads(store.blob_path(manifest.config).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pull(
    settings: Settings, ref: OllamaRef, notify: Notify, expect: Expectation | None = None
) -> tuple[OllamaStore, Manifest]:
    """Download ``ref``'s manifest and every blob it names into llamadoc's store.

    The config blob (a few hundred bytes) comes first: with the layer list it tells
    whether the engine can load the model, before gigabytes are fetched for nothing.
    """
    manifest = fetch_manifest(settings, ref)
    store = own_store(settings)
    if manifest.config is not None and not store.has(manifest.config):
        _fetch_blob(settings, ref, store, manifest.config, notify)
    if expect is not None:
        expect.check(ref, manifest, read_config(store, manifest))
    missing = [blob for blob in manifest.blobs if not store.has(blob)]
    download.ensure_space(store.root, sum(blob.size for blob in missing), f"{ref.name}:{ref.tag}")
    for blob in missing:
        _fetch_blob(settings, ref, store, blob, notify)
    # The manifest goes last: a model whose manifest is in place has all its blobs.
    path = store.manifest_path(registry_host(settings), ref)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(manifest.raw)
        tmp.replace(path)
    except OSError as err:
        raise download.write_error(err, path.parent) from None
    return store, manifest


def _fetch_blob(settings: Settings, ref: OllamaRef, store: OllamaStore, blob: Layer, notify: Notify) -> None:
    remote = download.Remote(
        url=_url(settings, ref, f"blobs/{blob.digest}"),
        label=f"{ref.name}:{ref.tag} {blob.kind} layer",
        sha256=blob.hex,
        size=blob.size,
        hints=_hints(ref),
    )
    download.fetch(remote, store.blob_path(blob), notify)


def fetch_manifest(settings: Settings, ref: OllamaRef) -> Manifest:
    url = _url(settings, ref, f"manifests/{quote(ref.tag)}")
    raw = download.get(url, f"the manifest of {ref}", {"Accept": MANIFEST_TYPE}, _hints(ref))
    try:
        return parse_manifest(raw)
    except ValueError as err:
        raise DownloadError(
            f"the registry sent a manifest for {ref} that llamadoc cannot read: {err}",
            hint="check that LLAMADOC_OLLAMA_REGISTRY points at an Ollama registry",
        ) from None


def _url(settings: Settings, ref: OllamaRef, tail: str) -> str:
    return f"{settings.ollama_registry}/v2/{quote(ref.namespace)}/{quote(ref.name)}/{tail}"


def _hints(ref: OllamaRef) -> dict[int, str]:
    refused = "llamadoc pulls public models anonymously; pull it with `ollama pull` and llamadoc uses Ollama's copy"
    return {
        401: refused,
        403: refused,
        404: "check the name and tag against ollama.com/library, and LLAMADOC_OLLAMA_REGISTRY",
    }
