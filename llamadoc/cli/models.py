"""`llamadoc models ...` and `llamadoc doctor`: the registry and the machine, as the user sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@models_app.command("list")
def models_list(config: Config = None) -> None:
    """The models llamadoc knows: engine, size, memory, the source they come from, and whether they are here."""
    from rich.console import Console
    from rich.table import Table

    from llamadoc.config import load_settings
    from llamadoc.registry.card import listing
    from llamadoc.registry.transfer import human_size

    settings = load_settings(config)
    listed = listing(settings)
    table = Table(box=None, pad_edge=False)
    for column in listed.columns:
        table.add_column(column)
    for row in listed.rows:
        table.add_row(*row)
    Console(width=200).print(table)
    print(f"models folder: {settings.models_dir} ({human_size(listed.used)} used)")
    if listed.in_place:
        print(f"used in place, not copied: {human_size(listed.in_place)} in Ollama's store or the Hugging Face cache")


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
    from llamadoc.registry.card import pull_plan

    settings = load_settings(config)
    for name in names:
        plan = pull_plan(settings, name, source, quant)
        if isinstance(plan, Path):
            say(f"{plan} is a local file: nothing to download")
            print(plan)
            continue
        if plan.here:
            say(f"model {name} is already here")
        for path in registry.pull(settings, plan.spec, notify=say, source=source, quant=quant,
                                  keep_source=keep_source):
            print(path)


@models_app.command("rm")
def models_rm(names: ModelNames, config: Config = None) -> None:
    """Delete llamadoc's copies of models (never Ollama's or the Hugging Face cache's)."""
    from llamadoc import registry
    from llamadoc.config import load_settings
    from llamadoc.registry.card import entry_or_file
    from llamadoc.registry.transfer import human_size

    settings = load_settings(config)
    for name in names:
        if isinstance(entry_or_file(settings, name), Path):
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
    from llamadoc.config import load_settings
    from llamadoc.registry.card import file_of

    print(file_of(load_settings(config), name, role))


@models_app.command("info")
def models_info(name: ModelName, config: Config = None) -> None:
    """A model's entry, its files, and what their GGUF headers say."""
    from llamadoc.config import load_settings
    from llamadoc.registry.card import card, entry_or_file

    settings = load_settings(config)
    _print_rows(card(settings, entry_or_file(settings, name)))


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
    from llamadoc.registry.card import downloaded, entry_or_file

    settings = load_settings(config)
    targets = [entry_or_file(settings, n) for n in names] if names else downloaded(settings)
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
    from llamadoc.config import load_settings
    from llamadoc.registry.card import machine

    _print_rows(machine(load_settings(config)))


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
