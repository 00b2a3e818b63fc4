"""`llamadoc models ...` and `llamadoc doctor`: the registry and the machine, as the user sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llamadoc.cli.common import Config, say
from llamadoc.errors import UsageError

models_app = typer.Typer(help="List, download, inspect, check and delete models.", no_args_is_help=True)

ModelName = Annotated[
    str,
    typer.Argument(help="A model name from `models list`, an hf:// or ollama:// address, or a .gguf path.",
                   show_default=False),
]
ModelNames = Annotated[
    list[str],
    typer.Argument(help="Model names from `models list`, or hf:// / ollama:// addresses.", show_default=False),
]
PATH_ROLES = ("model", "mmproj", "template", "params")


def _model_or_path(settings: Any, name: str) -> Any:
    """The registry entry for ``name``, or the Path of a .gguf file given instead."""
    from llamadoc import registry
    from llamadoc.errors import ModelError

    if name not in settings.models and registry.looks_like_path(name):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    return settings.model(name)


def _origin_of(settings: Any, spec: Any) -> Any:
    """The source a model's files are here from, else the one a pull would take first."""
    from llamadoc.registry.locate import present_origin

    return present_origin(settings, spec) or spec.origins[0]


def _presence(spec: Any, files: list[Any]) -> str:
    from llamadoc.registry.transfer import human_size

    declared = [f for f in files if f.role in {d.role for d in spec.files}]
    if all(f.present for f in declared):
        places = sorted({f.place for f in declared if f.shared})
        return "yes" + (f" ({', '.join(places)})" if places else "")
    partial = sum(f.partial for f in declared)
    return f"partial ({human_size(partial)})" if partial else "no"


@models_app.command("list")
def models_list(config: Config = None) -> None:
    """The models llamadoc knows: engine, size, memory, the source they come from, and whether they are here."""
    from rich.console import Console
    from rich.table import Table

    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.locate import HF_CACHE, OLLAMA
    from llamadoc.registry.transfer import human_size

    settings = load_settings(config)
    table = Table(box=None, pad_edge=False)
    for column in ("name", "engine", "kind", "quant", "size", "context", "memory", "source", "local"):
        table.add_column(column)
    shared: dict[Path, int] = {}
    defaults = {settings.default_vision: " (default)", settings.default_guard: " (default guard)"}
    for name, spec in sorted(settings.models.items()):
        source = _origin_of(settings, spec)
        files = registry.locate(settings, spec.with_origin(source.name))
        shared.update({f.path: f.size for f in files if f.present and f.place in (OLLAMA, HF_CACHE) and f.path})
        table.add_row(
            name + defaults.get(name, ""),
            spec.engine,
            spec.kind,
            spec.quantisation or "",
            human_size(spec.size_bytes),
            f"{spec.context:,}" if spec.context else "?",
            f"{spec.min_memory_gb:g} GB" if spec.min_memory_gb else "?",
            source.name + ("" if source.checked else " (unchecked)"),
            _presence(spec.with_origin(source.name), files),
        )
    Console(width=200).print(table)
    print(f"models folder: {settings.models_dir} ({human_size(_disk_used(settings.models_dir))} used)")
    if shared:
        where = "in Ollama's store or the Hugging Face cache"
        print(f"used in place, not copied: {human_size(sum(shared.values()))} {where}")


def _disk_used(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


@models_app.command("pull")
def models_pull(
    names: ModelNames,
    source: Annotated[
        str | None, typer.Option("--source", help="Which of a model's sources to pull from (e.g. meta).")
    ] = None,
    quant: Annotated[
        str | None, typer.Option("--quant", help="For a checkpoint converted on pull: Q4_K_M, Q8_0, F16 or F32.")
    ] = None,
    keep_source: Annotated[
        bool, typer.Option("--keep-source", help="Keep a converted checkpoint's download (deleted by default).")
    ] = False,
    config: Config = None,
) -> None:
    """Download models' files (resumable, verified) into LLAMADOC_HOME; prints their paths.

    A checkpoint (Meta's safetensors) is converted to one GGUF here. A model whose
    first source answers 404 is pulled from its next one.
    """
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.locate import complete

    settings = load_settings(config)
    for name in names:
        target = _model_or_path(settings, name)
        if isinstance(target, Path):
            say(f"{target} is a local file: nothing to download")
            print(target)
            continue
        chosen = target.with_origin(source) if source else target
        if quant and not chosen.origins[0].converts:
            converting = [s.name for s in target.origins if s.converts]
            raise UsageError(
                f"--quant applies to a checkpoint converted on pull; {name}'s source {chosen.origins[0].name} "
                "is a ready GGUF",
                hint=f"add --source {converting[0]}" if converting else "drop --quant",
            )
        if (complete(settings, chosen, quant) if source or quant else registry.is_present(settings, target)):
            say(f"model {name} is already here")
        for path in registry.pull(settings, target, notify=say, source=source, quant=quant, keep_source=keep_source):
            print(path)


@models_app.command("rm")
def models_rm(names: ModelNames, config: Config = None) -> None:
    """Delete llamadoc's copies of models (never Ollama's or the Hugging Face cache's)."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.transfer import human_size

    settings = load_settings(config)
    for name in names:
        if isinstance(_model_or_path(settings, name), Path):
            raise UsageError(f"{name} is a file of yours: llamadoc deletes only what it downloaded")
    for name in names:
        done = registry.remove(settings, settings.model(name), notify=say)
        for path in done.removed:
            say(f"removed {path}")
        for path, why in done.kept:
            say(f"kept {path}: {why}")
        if done.removed:
            say(f"model {name}: {human_size(done.freed)} freed")
        elif not done.kept:
            say(f"model {name} has no files here")


@models_app.command("path")
def models_path(
    name: ModelName,
    role: Annotated[str, typer.Option("--file", help="model, mmproj, template or params.")] = "model",
    config: Config = None,
) -> None:
    """Print where a model's file is, for other tools (llama-server -m "$(llamadoc models path NAME)")."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import ModelError

    if role not in PATH_ROLES:
        raise UsageError(f"--file {role!r} is not one of {', '.join(PATH_ROLES)}")
    settings = load_settings(config)
    target = _model_or_path(settings, name)
    if isinstance(target, Path):
        print(target.absolute())
        return
    files = {f.role: f for f in registry.locate(settings, target.with_origin(_origin_of(settings, target).name))}
    file = files.get(role)
    if file is None:
        raise ModelError(f"model {name} has no {role} file")
    if not file.present or file.path is None:
        raise ModelError(f"model {name} is not downloaded", hint=f"run: llamadoc models pull {name}")
    print(file.path)


@models_app.command("info")
def models_info(name: ModelName, config: Config = None) -> None:
    """A model's entry, its files, and what their GGUF headers say."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import ModelError
    from llamadoc.registry.transfer import human_size

    settings = load_settings(config)
    target = _model_or_path(settings, name)
    rows: list[tuple[str, str]] = []
    if isinstance(target, Path):
        rows.append(("file", str(target.absolute())))
        rows.append(("size", human_size(target.stat().st_size)))
        rows.extend(_gguf_rows(registry.gguf_summary(target)))
    else:
        spec = target
        rows.extend([
            ("name", spec.name),
            ("engine", f"{spec.engine} ({spec.kind})"),
            ("description", spec.description),
            ("quantisation", spec.quantisation or "?"),
            ("size", human_size(spec.size_bytes)),
            ("context", f"{spec.context:,} tokens" if spec.context else "?"),
            ("memory", f"{spec.min_memory_gb:g} GB or more" if spec.min_memory_gb else "?"),
            ("max pixels", f"{spec.max_pixels:,}" if spec.max_pixels else "the default"),
            ("defined in", spec.defined_in),
        ])
        here = _origin_of(settings, spec)
        for candidate in spec.origins:
            note = "checked" if candidate.checked else "unchecked"
            if candidate.converts:
                note += ", a checkpoint converted to GGUF on pull"
            used = " <- its files are here" if candidate is here and registry.is_present(settings, spec) else ""
            rows.append(("source", f"{candidate.name} ({note}){used}"))
        for file in registry.locate(settings, spec.with_origin(here.name)):
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
                    rows.extend(("  " + key, value) for key, value in _gguf_rows(registry.gguf_summary(file.path)))
                except ModelError as err:  # say so, and go on with the other files
                    rows.append(("  gguf", err.message))
    rows = [(key, value) for key, value in rows if value]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _gguf_rows(summary: Any) -> list[tuple[str, str]]:
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


@models_app.command("verify")
def models_verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Model names or .gguf paths; all downloaded models if none.")
    ] = None,
    config: Config = None,
) -> None:
    """Hash models' files anew and compare with their sha256; a bad copy of llamadoc's is deleted."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.errors import DownloadError

    settings = load_settings(config)
    targets = [_model_or_path(settings, n) for n in names] if names else [
        spec for spec in settings.models.values()
        if any(f.present for source in spec.origins for f in registry.locate(settings, spec.with_origin(source.name)))
    ]
    if not targets:
        say("no downloaded models to verify")
        return
    bad: list[str] = []
    for spec in targets:
        if isinstance(spec, Path):  # a file of the user's: its digest, for them to compare
            print(f"{'unchecked':<9} {spec}: sha256 {registry.fresh_sha256(spec, settings.cache_dir)}")
            continue
        for check in registry.verify(settings, spec, notify=say):
            status = {True: "ok", False: "MISMATCH", None: "unchecked"}[check.ok]
            note = " (deleted)" if check.deleted else (" (no digest to compare with)" if check.ok is None else "")
            print(f"{status:<9} {spec.name} {check.file.role}: {check.file.path}{note}")
            if check.ok is False:
                bad.append(spec.name)
    if bad:
        raise DownloadError(
            f"{len(bad)} file(s) failed verification",
            hint=f"run: llamadoc models pull {' '.join(sorted(set(bad)))} (files in Ollama's store or the Hub cache: "
            "fetch them again with the tool that owns them)",
        )


@models_app.command("convert")
def models_convert(
    hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face Llama 3.2 Vision folder (config.json + safetensors).")],
    out: Annotated[Path, typer.Argument(help="The GGUF file to write.")],
    quant: Annotated[str, typer.Option("--quant", help="F32, F16, Q8_0 or Q4_K_M.")] = "Q4_K_M",
) -> None:
    """Convert Meta's Llama 3.2 Vision (or Llama Guard 3 Vision) checkpoint to one GGUF file."""
    from llamadoc.engines.mllama.convert import convert

    report = convert(hf_dir, out, quant)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(report.types.items()))
    say(f"wrote {report.n_tensors} tensors ({kinds}), {report.bytes / 1e9:.2f} GB")
    for line in report.fallbacks[:5]:
        say(f"kept wider: {line}")
    print(report.path)


def doctor(config: Config = None) -> None:
    """Versions, compiled-in ggml backends, GPUs, and where models live."""
    import platform
    from importlib.metadata import version

    from llamadoc import engines, registry
    from llamadoc.config import load_settings

    settings = load_settings(config)
    rows = [
        ("llamadoc", version("llamadoc") if _installed("llamadoc") else "source checkout"),
        ("python", platform.python_version()),
        ("llama-cpp-python", version("llama-cpp-python")),
    ]
    for dev in engines.devices():
        memory = (f" ({dev['memory_free'] / 2**30:.1f} of {dev['memory_total'] / 2**30:.1f} GiB free)"
                  if dev["memory_total"] else "")
        rows.append(("ggml device", f"{dev['name']} [{dev['kind']}]: {dev['description']}{memory}"))
    rows.append(("gpu offload", "yes" if engines.gpu_offload() else "no (CPU only)"))
    rows.append(("LLAMADOC_HOME", str(settings.home)))
    rows.append(("offline", "yes" if settings.offline else "no"))
    for name, spec in sorted(settings.models.items()):
        rows.append(("model", f"{name}: {'present' if registry.is_present(settings, spec) else 'not downloaded'}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False
