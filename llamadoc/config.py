"""Settings: models.toml (shipped) + the user's models.toml + environment variables.

Parsed once into frozen dataclasses; unknown keys and bad values are reported with
the file and the key, so a typo never silently changes behaviour.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llamadoc.errors import ConfigError

ENGINES = ("mtmd", "mllama", "llama")
# An address given without a models.toml entry: the engine is read from the file once it is here.
ENGINE_FROM_FILE = "from-file"
KINDS = ("vision", "guard", "vision-guard")
FILE_ROLES = ("model", "mmproj")
DEFAULT_OLLAMA_REGISTRY = "https://registry.ollama.ai"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

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
    "sources": dict,
}
_FILE_KEYS = {"source": str, "sha256": str, "size": int, "checked": bool}
_SOURCE_KEYS = {"files": dict}
_DEFAULT_KEYS = {"vision": str, "guard": str}
_DEFAULT_KINDS = {"vision": ("vision",), "guard": ("guard", "vision-guard")}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "a table", bool: "true or false",
               list: "a list"}
# A registry name must never be mistaken for a path or a source address.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_OLLAMA_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


DEFAULT_STDIN_LIMIT = 2 << 30  # bytes a pipe may carry; past it the document fails
# The pixel budget of a page when models.toml gives the model none: a Letter/A4 page at about 100 DPI.
DEFAULT_MAX_PIXELS = 1_254_400

@dataclass(frozen=True)
class HfRef:
    """A file in a Hugging Face repository: hf://owner/repo[@revision]/path/in/repo."""

    repo_id: str
    filename: str
    revision: str = "main"

    def __str__(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo_id}{at}/{self.filename}"


@dataclass(frozen=True)
class HfRepoRef:
    """A Hugging Face checkpoint (safetensors + config + tokenizer), converted to GGUF on pull: hf://owner/repo[@revision]."""

    repo_id: str
    revision: str = "main"

    def __str__(self) -> str:
        at = "" if self.revision == "main" else f"@{self.revision}"
        return f"hf://{self.repo_id}{at}"


@dataclass(frozen=True)
class OllamaRef:
    """A model in an Ollama registry: ollama://[namespace/]name[:tag]."""

    namespace: str
    name: str
    tag: str = "latest"

    def __str__(self) -> str:
        return f"ollama://{self.namespace}/{self.name}:{self.tag}"


SourceRef = HfRef | HfRepoRef | OllamaRef | Path


def parse_source(source: str) -> SourceRef:
    """The typed form of a file source; ValueError says what is wrong with it."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return Path(source).expanduser()
    if scheme == "hf":
        owner, _, after_owner = rest.partition("/")
        repo_at, _, filename = after_owner.partition("/")
        repo, _, revision = repo_at.partition("@")
        if owner and repo and not filename and not repo.endswith(".gguf") and "@" not in owner:
            return HfRepoRef(repo_id=f"{owner}/{repo}", revision=revision or "main")
        if not (owner and repo and filename):
            raise ValueError("use hf://owner/repo/path/to/file.gguf, or hf://owner/repo for a checkpoint to convert")
        return HfRef(repo_id=f"{owner}/{repo}", filename=filename, revision=revision or "main")
    if scheme == "ollama":
        path, _, tag = rest.partition(":")
        namespace, _, name = path.rpartition("/")
        namespace = namespace or "library"
        tag = tag or "latest"
        if not all(_OLLAMA_PART.fullmatch(part) for part in (namespace, name, tag)):
            raise ValueError("use ollama://library/name:tag (letters, digits, '.', '_' and '-')")
        return OllamaRef(namespace=namespace, name=name, tag=tag)
    raise ValueError(f"unknown scheme {scheme!r}: use hf://, ollama:// or a local path")


@dataclass(frozen=True)
class OriginFile:
    role: str  # "model" or "mmproj"
    address: str  # hf://owner/repo/path, ollama://library/name:tag, or a local path
    sha256: str | None = None  # pins the file: a download that does not match is rejected
    size: int | None = None  # bytes as published: informational, the server's own figure is checked
    checked: bool = False  # confirmed against the published page (models.toml says how, beside it)

    @property
    def ref(self) -> SourceRef:
        return parse_source(self.address)


@dataclass(frozen=True)
class Origin:
    """One place a model's files come from; a model may have several, tried in order."""

    name: str  # "ollama", "hf", "path" for files.*, or the key of sources.NAME
    files: tuple[OriginFile, ...]

    @property
    def checked(self) -> bool:
        return all(f.checked for f in self.files)

    @property
    def converts(self) -> bool:
        """A checkpoint that a pull converts to GGUF, rather than files fetched as they are."""
        return any(isinstance(f.ref, HfRepoRef) for f in self.files)


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
    origins: tuple[Origin, ...] = ()  # where it can be had (models.toml's sources), in the order a pull tries them
    defined_in: str = ""  # the file that defined it, for messages

    @property
    def files(self) -> tuple[OriginFile, ...]:
        """The files of the first source: what locate, pull and resolve work on."""
        return self.origins[0].files if self.origins else ()

    @property
    def address(self) -> bool:
        """An hf:// or ollama:// address given as it is, with no models.toml entry."""
        return self.engine == ENGINE_FROM_FILE

    def file(self, role: str) -> OriginFile | None:
        return next((f for f in self.files if f.role == role), None)

    def origin(self, name: str) -> Origin:
        for source in self.origins:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.origins)
        raise ConfigError(f"model {self.name} has no source {name!r}", hint=f"its sources: {known}")

    def with_origin(self, name: str) -> ModelSpec:
        """This model with source ``name`` first: the one locate, pull and resolve then use."""
        chosen = self.origin(name)
        return replace(self, origins=(chosen, *(s for s in self.origins if s is not chosen)))


@dataclass(frozen=True)
class Settings:
    home: Path
    offline: bool
    ollama_registry: str
    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    default_vision: str = ""
    default_guard: str = ""
    hf_endpoint: str = DEFAULT_HF_ENDPOINT
    hf_token: str | None = None  # None: huggingface_hub looks in its usual places
    hf_cache: Path | None = None  # huggingface_hub's cache, whose files are used in place
    ollama_stores: tuple[Path, ...] = ()  # Ollama's own model folders, whose blobs are used in place
    stdin_limit_set: str = ""  # LLAMADOC_STDIN_LIMIT as given: checked when a pipe is read (stdin_limit)
    server: str | None = None  # a running `llamadoc serve` for the document commands (LLAMADOC_HOST)
    api_key: str | None = None  # its Bearer token (LLAMADOC_API_KEY); `llamadoc serve`'s own key too
    origins: tuple[str, ...] = ()  # web origins `llamadoc serve` allows besides its defaults (LLAMADOC_ORIGINS)

    @property
    def stdin_limit(self) -> int:
        """Bytes a pipe may carry. Checked here, when documents are collected, so that a bad value
        fails the commands that read a pipe and not `llamadoc models list`."""
        return _stdin_limit(self.stdin_limit_set)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def model(self, name: str) -> ModelSpec:
        """The models.toml entry ``name``, or the entry an hf:// or ollama:// address stands for."""
        if name in self.models:
            return self.models[name]
        if "://" in name:
            return address_spec(name)
        hint = f"known models: {', '.join(sorted(self.models)) or 'none'}; or pass a path to a .gguf file"
        raise ConfigError(f"unknown model {name!r}", hint=hint)


def address_spec(address: str, kind: str = "") -> ModelSpec:
    """A model known only by its address (hf://owner/repo/file.gguf, hf://owner/repo, ollama://name:tag).

    Its engine comes from the file once it is here; ``kind`` says what the caller wants of
    it ("vision" or "guard"), so that a pull can refuse what cannot serve before downloading.
    """
    try:
        ref = parse_source(address)
    except ValueError as err:
        raise ConfigError(f"{address!r} is not a model address", hint=str(err)) from None
    if isinstance(ref, Path):
        raise ConfigError(
            f"{address!r} is not a model address", hint="use hf://, ollama://, or a path without a scheme"
        )
    name = {HfRef: "hf", HfRepoRef: "hf", OllamaRef: "ollama"}[type(ref)]
    return ModelSpec(
        name=address,
        engine=ENGINE_FROM_FILE,
        kind=kind,
        quantisation="Q4_K_M" if isinstance(ref, HfRepoRef) else None,
        origins=(Origin(name, (OriginFile("model", str(ref)),)),),
        defined_in="the address given",
    )


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("LLAMADOC_HOME"):
        return Path(env["LLAMADOC_HOME"]).expanduser().absolute()
    # Imported here: platformdirs is only needed when no home is set.
    import platformdirs

    return Path(platformdirs.user_cache_dir("llamadoc", appauthor=False))


def load_settings(config: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the shipped registry, then the user's file (``config`` or $LLAMADOC_HOME/models.toml)."""
    env = os.environ if env is None else env
    home = default_home(env)
    shipped = resources.files("llamadoc").joinpath("models.toml")
    models: dict[str, ModelSpec] = {}
    defaults: dict[str, tuple[str, str]] = {}  # role -> (model name, file that set it)
    origin = "models.toml (shipped)"
    _merge(_read_toml_text(shipped.read_text(encoding="utf-8"), origin), origin, None, models, defaults)
    user = config if config is not None else home / "models.toml"
    if config is not None and not config.is_file():
        raise ConfigError(f"config file {config} does not exist")
    if user.is_file():
        text = user.read_text(encoding="utf-8")
        _merge(_read_toml_text(text, str(user)), str(user), user.absolute().parent, models, defaults)
    for role, (name, where) in defaults.items():
        if name not in models:
            raise ConfigError(f"{where}: defaults.{role} names unknown model {name!r}")
        if models[name].kind not in _DEFAULT_KINDS[role]:
            raise ConfigError(
                f"{where}: defaults.{role} names {name!r}, a {models[name].kind} model",
                hint=f"pick a model of kind {' or '.join(_DEFAULT_KINDS[role])}",
            )
    return Settings(
        home=home,
        offline=_flag(env, "LLAMADOC_OFFLINE") or _hf_true(env.get("HF_HUB_OFFLINE")),
        ollama_registry=_url(env, "LLAMADOC_OLLAMA_REGISTRY", DEFAULT_OLLAMA_REGISTRY),
        models=models,
        default_vision=defaults.get("vision", ("", ""))[0],
        default_guard=defaults.get("guard", ("", ""))[0],
        hf_endpoint=_url(env, "HF_ENDPOINT", DEFAULT_HF_ENDPOINT),
        hf_token=env.get("HF_TOKEN") or None,
        hf_cache=_hf_cache(env),
        ollama_stores=_ollama_stores(env),
        stdin_limit_set=env.get("LLAMADOC_STDIN_LIMIT", ""),
        server=env.get("LLAMADOC_HOST") or None,
        api_key=env.get("LLAMADOC_API_KEY") or None,
        origins=_list(env.get("LLAMADOC_ORIGINS", "")),
    )


def raise_errors(env: Mapping[str, str] | None = None) -> bool:
    """LLAMADOC_RAISE_ERRORS=1: re-raise errors with their traceback (debugging, tests); read
    apart from the settings, since a broken setting is among the errors it shows."""
    return (os.environ if env is None else env).get("LLAMADOC_RAISE_ERRORS", "") not in ("", "0")


def echo_ggml_logs(env: Mapping[str, str] | None = None) -> bool:
    """LLAMADOC_GGML_LOG=1: show ggml's own log lines (debugging the mllama engine)."""
    return (os.environ if env is None else env).get("LLAMADOC_GGML_LOG") == "1"


def _list(value: str) -> tuple[str, ...]:
    """A comma-separated setting, quotes and spaces around each item trimmed, as Ollama reads OLLAMA_ORIGINS."""
    return tuple(p for p in (part.strip().strip("\"'").strip() for part in value.split(",")) if p)


def _stdin_limit(value: str) -> int:
    if not value:
        return DEFAULT_STDIN_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigError(f"LLAMADOC_STDIN_LIMIT={value!r} is not a number of bytes")
    return limit


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1 or 0, not {env[name]!r}")


def _hf_true(value: str | None) -> bool:
    # huggingface_hub's own reading of its variables, so both tools agree.
    return (value or "").upper() in ("1", "ON", "YES", "TRUE")


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


def _hf_cache(env: Mapping[str, str]) -> Path:
    # The same lookup huggingface_hub does at import, from the environment we were given.
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return cache / "huggingface" / "hub"


def _ollama_stores(env: Mapping[str, str]) -> tuple[Path, ...]:
    # OLLAMA_MODELS replaces Ollama's default folder; Linux service installs keep theirs apart.
    if env.get("OLLAMA_MODELS"):
        return (Path(env["OLLAMA_MODELS"]).expanduser(),)
    return (Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models"))


def _read_toml_text(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: not valid TOML: {err}") from None


def _merge(
    data: dict[str, Any],
    origin: str,
    base_dir: Path | None,
    models: dict[str, ModelSpec],
    defaults: dict[str, tuple[str, str]],
) -> None:
    for key in data:
        if key not in ("models", "defaults"):
            raise _unknown_key(origin, key, ("models", "defaults"))
    for key, value in _table(origin, "defaults", data.get("defaults", {})).items():
        _check_type(origin, f"defaults.{key}", value, _DEFAULT_KEYS)
        defaults[key] = (value, origin)
    for name, body in _table(origin, "models", data.get("models", {})).items():
        if not _NAME.fullmatch(name) or name.endswith(".gguf"):
            raise ConfigError(
                f"{origin}: model name {name!r} is not allowed",
                hint="use letters, digits and . _ : / -, not starting with a dot or slash",
            )
        models[name] = _parse_model(origin, base_dir, name, _table(origin, f"models.{name}", body), models.get(name))


def _table(origin: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: {key} must be a table, not {type(value).__name__}")
    return value


def _unknown_key(origin: str, key: str, allowed: Any) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
    return ConfigError(f"{origin}: unknown key {key!r}", hint=hint)


def _check_type(origin: str, key: str, value: Any, allowed: Mapping[str, type]) -> None:
    leaf = key.rsplit(".", 1)[-1]
    if leaf not in allowed:
        raise _unknown_key(origin, key, allowed)
    want = allowed[leaf]
    ok = isinstance(value, want) or (want is float and isinstance(value, int))
    if not ok or (want in (int, float) and isinstance(value, bool)):
        given = _TYPE_NAMES.get(type(value), type(value).__name__)
        raise ConfigError(f"{origin}: {key} must be {_TYPE_NAMES[want]}, not {given}")
    if want in (int, float) and value <= 0:
        raise ConfigError(f"{origin}: {key} must be positive, not {value}")


def _parse_file(origin: str, base_dir: Path | None, key: str, role: str, body: Any) -> OriginFile:
    if isinstance(body, str):
        body = {"source": body}
    if not isinstance(body, dict) or "source" not in body:
        raise ConfigError(f"{origin}: {key} needs a 'source'")
    for name, value in body.items():
        _check_type(origin, f"{key}.{name}", value, _FILE_KEYS)
    source = body["source"]
    try:
        ref = parse_source(source)
    except ValueError as err:
        raise ConfigError(f"{origin}: {key}.source {source!r} is not a source", hint=str(err)) from None
    if isinstance(ref, Path) and not ref.is_absolute() and base_dir is not None:
        source = str(base_dir / ref)  # relative paths mean: beside the file that names them
    sha256 = body.get("sha256")
    if sha256 is not None and isinstance(ref, OllamaRef):
        raise ConfigError(
            f"{origin}: {key}.sha256 does not apply to an Ollama source", hint="its layers are named by their digests"
        )
    if sha256 is not None and isinstance(ref, HfRepoRef):
        raise ConfigError(
            f"{origin}: {key}.sha256 does not apply to a checkpoint",
            hint="the GGUF is made on this machine; its digest is recorded when it is",
        )
    if sha256 is not None:
        sha256 = sha256.lower()
        if not _SHA256.fullmatch(sha256):
            raise ConfigError(f"{origin}: {key}.sha256 must be 64 hex digits")
    checked = body.get("checked", False)
    return OriginFile(role=role, address=source, sha256=sha256, size=body.get("size"), checked=checked)


def _parse_files(origin: str, base_dir: Path | None, prefix: str, body: Any) -> list[OriginFile]:
    files = []
    for role, fbody in _table(origin, prefix, body).items():
        if role not in FILE_ROLES:
            raise _unknown_key(origin, f"{prefix}.{role}", FILE_ROLES)
        files.append(_parse_file(origin, base_dir, f"{prefix}.{role}", role, fbody))
    return files


def _merged(files: tuple[OriginFile, ...], new: list[OriginFile]) -> tuple[OriginFile, ...]:
    roles = {f.role for f in new}
    return tuple([f for f in files if f.role not in roles] + new)


def _scheme_name(file: OriginFile) -> str:
    ref = file.ref
    return "path" if isinstance(ref, Path) else "ollama" if isinstance(ref, OllamaRef) else "hf"


def _parse_sources(
    origin: str, base_dir: Path | None, prefix: str, body: dict[str, Any], base: ModelSpec | None
) -> tuple[Origin, ...]:
    """files.* (one source, named by its scheme) and sources.NAME.files.*, merged into the base's by name."""
    sources = list(base.origins) if base else []
    if "files" in body:
        new = _parse_files(origin, base_dir, f"{prefix}.files", body["files"])
        model = next((f for f in new if f.role == "model"), None)
        name = _scheme_name(model) if model else (sources[0].name if sources else "")
        old = next((s for s in sources if s.name == name), None)
        merged = Origin(name, _merged(old.files if old else (), new))
        sources = [merged, *(s for s in sources if s is not old)]  # files.* comes first: it is what a pull takes
    for name, sbody in _table(origin, f"{prefix}.sources", body.get("sources", {})).items():
        key = f"{prefix}.sources.{name}"
        table = _table(origin, key, sbody)
        for k, v in table.items():
            _check_type(origin, f"{key}.{k}", v, _SOURCE_KEYS)
        new = _parse_files(origin, base_dir, f"{key}.files", table.get("files", {}))
        at = next((i for i, s in enumerate(sources) if s.name == name), None)
        merged = Origin(name, _merged(sources[at].files if at is not None else (), new))
        if at is None:
            sources.append(merged)
        else:
            sources[at] = merged
    return tuple(sources)


def _check_origin(origin: str, prefix: str, engine: str, source: Origin) -> None:
    model = next((f for f in source.files if f.role == "model"), None)
    where = f"{prefix} (source {source.name})" if source.name not in ("ollama", "hf", "path") else prefix
    if model is None:
        raise ConfigError(f"{origin}: {where} has no files.model")
    if isinstance(model.ref, HfRepoRef):
        if engine != "mllama":
            raise ConfigError(
                f"{origin}: {where}: a checkpoint ({model.address}) is converted by the mllama engine's converter",
                hint='set engine = "mllama", or name a .gguf file: hf://owner/repo/FILE.gguf',
            )
        if any(f.role == "mmproj" for f in source.files):
            raise ConfigError(f"{origin}: {where}: a converted checkpoint is one file; drop files.mmproj")
    # An Ollama manifest carries its own projector layer; any other libmtmd model needs one named.
    if engine == "mtmd" and not isinstance(model.ref, OllamaRef) and not any(f.role == "mmproj" for f in source.files):
        raise ConfigError(f"{origin}: {where} (engine mtmd) needs files.mmproj, its vision projector")


def _parse_model(
    origin: str, base_dir: Path | None, name: str, body: dict[str, Any], base: ModelSpec | None
) -> ModelSpec:
    prefix = f"models.{name}"
    for key, value in body.items():
        _check_type(origin, f"{prefix}.{key}", value, _MODEL_KEYS)
    sources = _parse_sources(origin, base_dir, prefix, body, base)
    engine = body.get("engine", base.engine if base else None)
    if engine not in ENGINES:
        raise ConfigError(f"{origin}: {prefix}.engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    kind = body.get("kind", base.kind if base else "vision")
    if kind not in KINDS:
        raise ConfigError(f"{origin}: {prefix}.kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not sources:
        raise ConfigError(f"{origin}: {prefix} has no files.model")
    for source in sources:
        _check_origin(origin, prefix, engine, source)
    inherited: dict[str, Any] = {
        k: getattr(base, k)
        for k in ("description", "quantisation", "size_bytes", "context", "min_memory_gb", "max_pixels")
    } if base else {}
    inherited.update({k: v for k, v in body.items() if k not in ("files", "sources", "engine", "kind")})
    if inherited.get("min_memory_gb") is not None:
        inherited["min_memory_gb"] = float(inherited["min_memory_gb"])
    return ModelSpec(name=name, engine=engine, kind=kind, origins=sources, defined_in=origin, **inherited)
