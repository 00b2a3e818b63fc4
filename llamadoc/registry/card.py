"""A model's card: its entry, where its files are, and what their GGUF headers say, as (key, value)
rows that any face can show (`llamadoc models info` prints them); and what the other `models`
commands and `doctor` decide before they print: which file a name means, what a pull would
take, and the machine's report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamadoc.config import ModelSpec, Origin, Settings
from llamadoc.errors import ModelError, UsageError
from llamadoc.gguf_header import GgufSummary, gguf_summary
from llamadoc.registry.locate import HF_CACHE, OLLAMA, LocalFile, complete, is_present, locate, present_origin
from llamadoc.registry.resolve import looks_like_path
from llamadoc.registry.transfer import human_size

Rows = list[tuple[str, str]]
FILE_ROLES = ("model", "mmproj", "template", "params")


def entry_or_file(settings: Settings, name: str) -> ModelSpec | Path:
    """The registry entry ``name`` (a name or an address), or the .gguf file it names instead."""
    if name not in settings.models and looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    return settings.model(name)


def downloaded(settings: Settings) -> list[ModelSpec]:
    """The known models with any file here, from any of their origins."""
    return [spec for spec in settings.models.values()
            if any(f.present for o in spec.origins for f in locate(settings, spec.with_origin(o.name)))]


def origin_here(settings: Settings, spec: ModelSpec) -> Origin:
    """The origin a model's files are here from, else the one a pull would take first."""
    return present_origin(settings, spec) or spec.origins[0]


def file_of(settings: Settings, name: str, role: str = "model") -> Path:
    """Where the ``role`` file of model ``name`` is on this machine (`llamadoc models path`)."""
    if role not in FILE_ROLES:
        raise UsageError(f"--file {role!r} is not one of {', '.join(FILE_ROLES)}")
    target = entry_or_file(settings, name)
    if isinstance(target, Path):
        return target.absolute()
    files = {f.role: f for f in locate(settings, target.with_origin(origin_here(settings, target).name))}
    file = files.get(role)
    if file is None:
        raise ModelError(f"model {name} has no {role} file")
    if not file.present or file.path is None:
        raise ModelError(f"model {name} is not downloaded", hint=f"run: llamadoc models pull {name}")
    return file.path


@dataclass(frozen=True)
class PullPlan:
    """What `llamadoc models pull NAME` would take: the entry, and whether that is here already."""

    spec: ModelSpec
    here: bool


def pull_plan(settings: Settings, name: str, source: str | None = None, quant: str | None = None
              ) -> PullPlan | Path:
    """The pull of ``name`` from ``source`` at ``quant``, checked before anything downloads; a
    .gguf path instead when ``name`` is a file of the user's (nothing to pull)."""
    target = entry_or_file(settings, name)
    if isinstance(target, Path):
        return target
    chosen = target.with_origin(source) if source else target
    if quant and not chosen.origins[0].converts:
        converting = [s.name for s in target.origins if s.converts]
        raise UsageError(
            f"--quant applies to a checkpoint converted on pull; {name}'s source {chosen.origins[0].name} "
            "is a ready GGUF",
            hint=f"add --source {converting[0]}" if converting else "drop --quant",
        )
    here = complete(settings, chosen, quant) if source or quant else is_present(settings, target)
    return PullPlan(spec=target, here=here)


def machine(settings: Settings) -> Rows:
    """`llamadoc doctor`'s report: versions, ggml's devices, where models live and which are here."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from llamadoc import engines

    try:
        ours = version("llamadoc")
    except PackageNotFoundError:
        ours = "source checkout"
    rows = [("llamadoc", ours), ("python", platform.python_version()),
            ("llama-cpp-python", version("llama-cpp-python"))]
    for dev in engines.devices():
        memory = (f" ({dev['memory_free'] / 2**30:.1f} of {dev['memory_total'] / 2**30:.1f} GiB free)"
                  if dev["memory_total"] else "")
        rows.append(("ggml device", f"{dev['name']} [{dev['kind']}]: {dev['description']}{memory}"))
    rows.append(("gpu offload", "yes" if engines.gpu_offload() else "no (CPU only)"))
    rows.append(("LLAMADOC_HOME", str(settings.home)))
    rows.append(("offline", "yes" if settings.offline else "no"))
    for name, spec in sorted(settings.models.items()):
        rows.append(("model", f"{name}: {'present' if is_present(settings, spec) else 'not downloaded'}"))
    return rows


@dataclass(frozen=True)
class Listing:
    """What `models list` shows: a row per known model, and the space models take."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    used: int  # bytes in the models folder
    in_place: int  # bytes of Ollama's store and the Hugging Face cache used where they are


def listing(settings: Settings) -> Listing:
    shared: dict[Path, int] = {}
    defaults = {settings.default_vision: " (default)", settings.default_guard: " (default guard)"}
    rows: list[tuple[str, ...]] = []
    for name, spec in sorted(settings.models.items()):
        origin = origin_here(settings, spec)
        files = locate(settings, spec.with_origin(origin.name))
        shared.update({f.path: f.size for f in files if f.present and f.place in (OLLAMA, HF_CACHE) and f.path})
        rows.append((
            name + defaults.get(name, ""), spec.engine, spec.kind, spec.quantisation or "", human_size(spec.size_bytes),
            f"{spec.context:,}" if spec.context else "?", f"{spec.min_memory_gb:g} GB" if spec.min_memory_gb else "?",
            origin.name + ("" if origin.checked else " (unchecked)"), _presence(spec.with_origin(origin.name), files),
        ))
    folder = settings.models_dir
    used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
    columns = ("name", "engine", "kind", "quant", "size", "context", "memory", "source", "local")
    return Listing(columns, rows, used, sum(shared.values()))


def _presence(spec: ModelSpec, files: list[LocalFile]) -> str:
    declared = [f for f in files if f.role in {d.role for d in spec.files}]
    if all(f.present for f in declared):
        places = sorted({f.place for f in declared if f.shared})
        return "yes" + (f" ({', '.join(places)})" if places else "")
    partial = sum(f.partial for f in declared)
    return f"partial ({human_size(partial)})" if partial else "no"


def card(settings: Settings, target: ModelSpec | Path) -> Rows:
    """The rows of a registry entry, or of a .gguf file given by its path; empty values left out."""
    if isinstance(target, Path):
        rows = [("file", str(target.absolute())), ("size", human_size(target.stat().st_size)),
                *gguf_rows(gguf_summary(target))]
    else:
        rows = _entry(settings, target)
    return [(key, value) for key, value in rows if value]


def _entry(settings: Settings, spec: ModelSpec) -> Rows:
    rows = [
        ("name", spec.name),
        ("engine", f"{spec.engine} ({spec.kind})"),
        ("description", spec.description),
        ("quantisation", spec.quantisation or "?"),
        ("size", human_size(spec.size_bytes)),
        ("context", f"{spec.context:,} tokens" if spec.context else "?"),
        ("memory", f"{spec.min_memory_gb:g} GB or more" if spec.min_memory_gb else "?"),
        ("max pixels", f"{spec.max_pixels:,}" if spec.max_pixels else "the default"),
        ("defined in", spec.defined_in),
    ]
    here = origin_here(settings, spec)
    for candidate in spec.origins:
        note = "checked" if candidate.checked else "unchecked"
        if candidate.converts:
            note += ", a checkpoint converted to GGUF on pull"
        used = " <- its files are here" if candidate is here and is_present(settings, spec) else ""
        rows.append(("source", f"{candidate.name} ({note}){used}"))
    for file in locate(settings, spec.with_origin(here.name)):
        rows.append((file.role, file.address))
        if not file.present or file.path is None:
            partial = f" ({human_size(file.partial)} of an interrupted download kept)" if file.partial else ""
            rows.append(("  path", "not downloaded" + partial))
            continue
        rows.append(("  path", f"{file.path} ({file.place}, {human_size(file.size)})"))
        if file.sha256:
            rows.append(("  sha256", file.sha256))
        if file.revision:
            rows.append(("  revision", file.revision))
        if file.role in ("model", "mmproj"):
            try:
                rows.extend(("  " + key, value) for key, value in gguf_rows(gguf_summary(file.path)))
            except ModelError as err:  # say so, and go on with the other files
                rows.append(("  gguf", err.message))
    return rows


def gguf_rows(summary: GgufSummary) -> Rows:
    return [
        ("architecture", summary.architecture + (f" ({summary.name})" if summary.name else "")),
        ("file type", summary.quantisation or "?"),
        ("parameters", f"{_count(summary.parameters)} in {summary.tensors} tensors"),
        ("trained context", f"{summary.context:,}" if summary.context else "not recorded"),
        ("vision", summary.vision or "none"),
        ("chat template", "yes" if summary.chat_template else "no"),
    ]


def _count(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)
