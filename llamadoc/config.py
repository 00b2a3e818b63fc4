"""Settings: models.toml (shipped) + the user's models.toml + LLAMADOC_* variables.

Parsed once into frozen dataclasses; unknown keys and bad values are reported with
the file and the key, so a typo never silently changes behaviour.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from llamadoc.errors import ConfigError

ENGINES = ("mtmd", "mllama", "llama")
KINDS = ("vision", "guard", "vision-guard")
FILE_ROLES = ("model", "mmproj")
DEFAULT_OLLAMA_REGISTRY = "https://registry.ollama.ai"

_MODEL_KEYS = {
    "engine": str,
    "kind": str,
    "description": str,
    "quantisation": str,
    "size_bytes": int,
    "context": int,
    "min_memory_gb": float,
    "max_pixels": int,
    "files": dict,
}
_FILE_KEYS = {"source": str, "sha256": str, "size": int}
_DEFAULT_KEYS = {"vision": str, "guard": str}


@dataclass(frozen=True)
class FileSource:
    role: str  # "model" or "mmproj"
    source: str  # hf://owner/repo/path, ollama://library/name:tag, or a local path
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    engine: str
    kind: str = "vision"
    description: str = ""
    quantisation: str | None = None
    size_bytes: int | None = None
    context: int | None = None
    min_memory_gb: float | None = None
    max_pixels: int | None = None  # the raster budget that suits the model's vision input
    files: tuple[FileSource, ...] = ()
    origin: str = ""  # the file that defined it, for messages

    def file(self, role: str) -> FileSource | None:
        return next((f for f in self.files if f.role == role), None)


@dataclass(frozen=True)
class Settings:
    home: Path
    offline: bool
    ollama_registry: str
    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    default_vision: str = ""
    default_guard: str = ""

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                f"unknown model {name!r}",
                hint=f"known models: {known}; or pass a path to a .gguf file",
            ) from None


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("LLAMADOC_HOME"):
        return Path(env["LLAMADOC_HOME"]).expanduser()
    # Imported here: platformdirs is only needed when no home is set.
    import platformdirs

    return Path(platformdirs.user_cache_dir("llamadoc", appauthor=False))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the shipped registry, then the user's file (``config`` or $LLAMADOC_HOME/models.toml)."""
    env = os.environ if env is None else env
    home = default_home(env)
    shipped = resources.files("llamadoc").joinpath("models.toml")
    models: dict[str, ModelSpec] = {}
    defaults: dict[str, tuple[str, str]] = {}  # role -> (model name, file that set it)
    _merge(_read_toml_text(shipped.read_text(encoding="utf-8"), "models.toml (shipped)"),
           "models.toml (shipped)", models, defaults)
    user = config if config is not None else home / "models.toml"
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {config} does not exist")
    if user.is_file():
        _merge(_read_toml_text(user.read_text(encoding="utf-8"), str(user)), str(user), models, defaults)
    for role, (name, origin) in defaults.items():
        if name not in models:
            raise ConfigError(f"{origin}: defaults.{role} names unknown model {name!r}")
    return Settings(
        home=home,
        offline=_truthy(env.get("LLAMADOC_OFFLINE")) or _truthy(env.get("HF_HUB_OFFLINE")),
        ollama_registry=env.get("LLAMADOC_OLLAMA_REGISTRY", DEFAULT_OLLAMA_REGISTRY).rstrip("/"),
        models=models,
        default_vision=defaults.get("vision", ("", ""))[0],
        default_guard=defaults.get("guard", ("", ""))[0],
    )


def _read_toml_text(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: not valid TOML: {err}") from None


def _merge(
    data: dict[str, Any], origin: str, models: dict[str, ModelSpec], defaults: dict[str, tuple[str, str]]
) -> None:
    for key in data:
        if key not in ("models", "defaults"):
            raise ConfigError(f"{origin}: unknown key {key!r}", hint="top-level keys are 'models' and 'defaults'")
    for key, value in data.get("defaults", {}).items():
        _check_type(origin, f"defaults.{key}", value, _DEFAULT_KEYS)
        defaults[key] = (value, origin)
    for name, body in data.get("models", {}).items():
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: models.{name!r} must be a table")
        models[name] = _parse_model(origin, name, body, models.get(name))


def _check_type(origin: str, key: str, value: Any, allowed: dict[str, type]) -> None:
    leaf = key.rsplit(".", 1)[-1]
    if leaf not in allowed:
        raise ConfigError(f"{origin}: unknown key {key!r}", hint=f"allowed: {', '.join(sorted(allowed))}")
    want = allowed[leaf]
    ok = isinstance(value, want) or (want is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok or (want is int and isinstance(value, bool)):
        raise ConfigError(f"{origin}: {key} must be a {want.__name__}, not {type(value).__name__}")


def _parse_model(origin: str, name: str, body: dict[str, Any], base: ModelSpec | None) -> ModelSpec:
    prefix = f"models.{name}"
    for key, value in body.items():
        _check_type(origin, f"{prefix}.{key}", value, _MODEL_KEYS)
    files = list(base.files) if base else []
    for role, fbody in body.get("files", {}).items():
        if role not in FILE_ROLES:
            raise ConfigError(f"{origin}: unknown key '{prefix}.files.{role}'", hint="file roles: model, mmproj")
        if isinstance(fbody, str):
            fbody = {"source": fbody}
        if not isinstance(fbody, dict) or "source" not in fbody:
            raise ConfigError(f"{origin}: {prefix}.files.{role} needs a 'source'")
        for key, value in fbody.items():
            _check_type(origin, f"{prefix}.files.{role}.{key}", value, _FILE_KEYS)
        files = [f for f in files if f.role != role]
        files.append(FileSource(role=role, **fbody))
    engine = body.get("engine", base.engine if base else None)
    if engine not in ENGINES:
        raise ConfigError(f"{origin}: {prefix}.engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    kind = body.get("kind", base.kind if base else "vision")
    if kind not in KINDS:
        raise ConfigError(f"{origin}: {prefix}.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not any(f.role == "model" for f in files):
        raise ConfigError(f"{origin}: {prefix} has no files.model")
    inherited = {
        k: getattr(base, k)
        for k in ("description", "quantisation", "size_bytes", "context", "min_memory_gb", "max_pixels")
    } if base else {}
    inherited.update({k: v for k, v in body.items() if k not in ("files", "engine", "kind")})
    if "min_memory_gb" in inherited and inherited["min_memory_gb"] is not None:
        inherited["min_memory_gb"] = float(inherited["min_memory_gb"])
    return ModelSpec(name=name, engine=engine, kind=kind, files=tuple(files), origin=origin, **inherited)
