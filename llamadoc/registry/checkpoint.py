"""A Hugging Face checkpoint (Meta's safetensors) made into one GGUF on this machine.

    pull(settings, ref, quant)   the repository's listing and gate through huggingface_hub,
                                 its files fetched (resumable, verified), converted by the
                                 mllama converter, checked, recorded; the download deleted
    gguf_path / find             where the converted file goes, or is

The checkpoint lands in models/checkpoints/<owner>/<repo>/<commit>/, the GGUF in
models/converted/<owner>/<repo>/<repo>-<QUANT>.gguf with two sidecars: <file>.sha256
(sha256sum's format) and <file>.source.json (repository, commit, quantisation, digests).
A complete snapshot in the Hub's own cache is converted in place and never deleted.

Bytes go through download.py, not hf_hub_download: huggingface_hub 2.4 writes each
download to a process-unique temporary file and deletes it on failure
(file_download._download_to_tmp_and_move), so a 20 GB checkpoint cut at 19 GB would
start over; download.py resumes it with a Range request on the next run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.config import HfRef, HfRepoRef, Settings
from llamadoc.errors import ModelError
from llamadoc.gguf_header import read_header
from llamadoc.registry import download, huggingface
from llamadoc.registry.download import Notify
from llamadoc.registry.hashing import fresh_sha256
from llamadoc.registry.transfer import human_size, progress_bar

# As the converter names them (llamadoc.engines.mllama.convert.QUANTS, which loads ggml: not for `models list`).
QUANTS = ("Q4_K_M", "Q8_0", "F16", "F32")
# Bytes per parameter of the converted file, before the checkpoint is here to plan it
# exactly: the text model at the quantisation, the vision tower at Q8_0 (or wider).
_BYTES_PER_PARAM = {"F32": 4.0, "F16": 2.0, "Q8_0": 1.07, "Q4_K_M": 0.66}
_CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
                     "chat_template.jinja")
_REQUIRED = ("config.json", "tokenizer.json")


@dataclass(frozen=True)
class RepoFile:
    name: str
    size: int | None
    sha256: str | None  # the LFS digest; small files are checked by size only


def gguf_path(settings: Settings, ref: HfRepoRef, quant: str) -> Path:
    folder = settings.models_dir / "converted" / ref.repo_id
    if ref.revision != "main":
        folder = folder / f"@{ref.revision}"
    return folder / f"{ref.repo_id.rpartition('/')[2]}-{quant}.gguf"


def staging_dir(settings: Settings, ref: HfRepoRef) -> Path:
    """Where the checkpoint's files are downloaded, one folder per commit."""
    return settings.models_dir / "checkpoints" / ref.repo_id


def find(settings: Settings, ref: HfRepoRef, quant: str | None) -> Path:
    """The converted file for ``quant``; else one of another quantisation that is here; else where ``quant`` goes."""
    wanted = gguf_path(settings, ref, quant or QUANTS[0])
    if wanted.is_file():
        return wanted
    for other in QUANTS:
        path = gguf_path(settings, ref, other)
        if path.is_file():
            return path
    return wanted


def quant_of(path: Path) -> str | None:
    stem = path.name.removesuffix(".gguf")
    return next((q for q in QUANTS if stem.endswith(f"-{q}")), None)


def pull(settings: Settings, ref: HfRepoRef, quant: str, keep_source: bool, notify: Notify) -> Path:
    """Download the checkpoint at ``ref`` and convert it to one GGUF at ``quant``; returns its path."""
    quant = quant.upper()
    if quant not in QUANTS:
        raise ModelError(f"unknown quantisation {quant!r} for {ref}", hint=f"choose one of {', '.join(QUANTS)}")
    target = gguf_path(settings, ref, quant)
    with download.locked(target, f"waiting for another llamadoc process that is converting {ref}", notify):
        if target.is_file():
            return target  # another process finished it while we waited
        commit, files = _listing(settings, ref)
        folder = _cached_snapshot(settings, ref, commit, files)
        if folder is None:
            folder = staging_dir(settings, ref) / commit
            _download(settings, ref, commit, files, folder, quant, notify)
        else:
            notify(f"converting the copy of {ref.repo_id} in the Hugging Face cache ({folder})")
        _convert(settings, ref, commit, folder, files, quant, target, notify)
        if folder.is_relative_to(staging_dir(settings, ref)):
            if keep_source:
                notify(f"kept the downloaded checkpoint in {folder}")
            else:
                freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder, ignore_errors=True)
                notify(f"deleted the downloaded checkpoint ({human_size(freed)}); --keep-source keeps it")
    return target


def _listing(settings: Settings, ref: HfRepoRef) -> tuple[str, list[RepoFile]]:
    """The commit ``ref`` names now and the checkpoint's files in it, refused early when gated without a token."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token, library_name="llamadoc",
                library_version=_version())
    url = f"{settings.hf_endpoint}/api/models/{ref.repo_id}"
    with huggingface.hub_errors(settings, ref.repo_id, "the file list", url):
        info = api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
    if info.gated and huggingface.token(settings) is None:
        raise huggingface.gated_error(settings, ref.repo_id, refused=False)
    siblings = info.siblings or []
    files = [
        RepoFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None)
        for s in siblings
        if "/" not in s.rfilename  # not original/: Meta's own consolidated.pth, which is not read here
        and (s.rfilename in _CHECKPOINT_FILES or s.rfilename.endswith(".safetensors"))
    ]
    names = {f.name for f in files}
    if not set(_REQUIRED) <= names or not any(n.endswith(".safetensors") for n in names):
        ggufs = [s.rfilename for s in siblings if s.rfilename.endswith(".gguf")]
        hint = (f"it has GGUF files: name one, e.g. hf://{ref.repo_id}/{ggufs[0]}" if ggufs
                else "a checkpoint has config.json, tokenizer.json and *.safetensors")
        raise ModelError(f"hf://{ref.repo_id} is not a checkpoint llamadoc can convert", hint=hint)
    if not info.sha:
        raise ModelError(f"the Hub did not say which commit hf://{ref.repo_id} is at", hint="try again")
    return info.sha, files


def _cached_snapshot(settings: Settings, ref: HfRepoRef, commit: str, files: list[RepoFile]) -> Path | None:
    """The Hub cache's snapshot folder of ``commit`` when it holds every file, used in place."""
    found = [huggingface.cached_path(settings, HfRef(ref.repo_id, f.name, commit)) for f in files]
    paths = [p for p in found if p is not None]
    return paths[0].parent if paths and len(paths) == len(files) else None


def _download(
    settings: Settings, ref: HfRepoRef, commit: str, files: list[RepoFile], folder: Path, quant: str, notify: Notify
) -> None:
    def fetch(file: RepoFile) -> Path:
        target = folder / file.name
        if target.is_file() and (file.sha256 is None or huggingface.known_sha256(target) == file.sha256):
            return target  # a previous run brought it, verified
        return huggingface.fetch(settings, HfRef(ref.repo_id, file.name, commit), target, file.sha256, notify)

    config = json.loads(fetch(next(f for f in files if f.name == "config.json")).read_text(encoding="utf-8"))
    if config.get("model_type") != "mllama":
        raise ModelError(
            f"hf://{ref.repo_id} is a {config.get('model_type')!r} checkpoint, not Llama 3.2 Vision ('mllama'); "
            "llamadoc converts only that one",
            hint=f"for a GGUF repository name the file: hf://{ref.repo_id}/FILE.gguf",
        )
    missing = [f for f in files if not (folder / f.name).is_file()]
    weights = sum(f.size or 0 for f in files if f.name.endswith(".safetensors"))
    wide = 4 if str(config.get("torch_dtype", config.get("dtype", "bfloat16"))) == "float32" else 2
    estimate = int(weights / wide * _BYTES_PER_PARAM[quant])
    need = sum(f.size or 0 for f in missing) + estimate
    download.ensure_space(folder, need, f"hf://{ref.repo_id} and its {quant} GGUF (about {human_size(estimate)})")
    if missing:
        notify(f"downloading the checkpoint hf://{ref.repo_id} at {commit[:12]}: {len(missing)} files, "
               f"{human_size(sum(f.size or 0 for f in missing))}")
    for file in files:
        fetch(file)


def _convert(
    settings: Settings, ref: HfRepoRef, commit: str, folder: Path, files: list[RepoFile], quant: str, target: Path,
    notify: Notify,
) -> None:
    # Imported here: the converter loads ggml and numpy, which only a conversion needs.
    from llamadoc.engines.mllama.convert import convert, planned_size

    needed = planned_size(folder, quant)
    download.ensure_space(target.parent, needed, f"converting hf://{ref.repo_id} to {quant}")
    target.parent.mkdir(parents=True, exist_ok=True)
    notify(f"converting hf://{ref.repo_id} to one {quant} GGUF (about {human_size(needed)})")
    bar = progress_bar(f"converting {ref.repo_id.rpartition('/')[2]}", None, unit="tensors")

    def on_tensor(_name: str, index: int, count: int) -> None:
        if index == 0:
            bar.set_total(count)
        bar.advance(1)

    try:
        report = convert(folder, target, quant, on_tensor=on_tensor, name=ref.repo_id.rpartition("/")[2])
    finally:
        bar.close()
    _verify(target, report.n_tensors, report.bytes)
    digest = fresh_sha256(target, settings.cache_dir)  # remembered: the first run does not hash it again
    huggingface.sidecar_path(target).write_text(f"{digest}  {target.name}\n", encoding="ascii")
    record: dict[str, Any] = {
        "source": str(ref),
        "revision": commit,
        "quantisation": quant,
        "sha256": digest,
        "converted_by": f"llamadoc {_version()}",
        "checkpoint": {f.name: f.sha256 for f in files if f.name.endswith(".safetensors")},
    }
    huggingface.write_provenance(target, record)
    notify(f"wrote {target} ({human_size(report.bytes)}, sha256 {digest[:12]}..., from commit {commit[:12]})")


def _verify(path: Path, tensors: int, size: int) -> None:
    """What the converter wrote is whole and is what the engine reads, or it is deleted."""
    header = read_header(path, tensors=True)
    problem = None
    if header.architecture != "mllama":
        problem = f"its architecture is {header.architecture!r}"
    elif len(header.tensors) != tensors:
        problem = f"it has {len(header.tensors)} tensors, not {tensors}"
    elif path.stat().st_size != size:
        problem = f"it has {path.stat().st_size} bytes, not {size}"
    if problem:
        path.unlink(missing_ok=True)
        raise ModelError(f"the converted file {path.name} failed its check ({problem}) and was deleted",
                         hint="run the pull again; if it repeats, report it")


def _version() -> str:
    """llamadoc's version as installed (the package root is not imported from down here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llamadoc")
    except PackageNotFoundError:
        return "source checkout"
