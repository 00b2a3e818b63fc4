"""Files from the Hugging Face Hub: where llamadoc keeps them, the copy the Hub's own cache may hold, the download.

huggingface_hub supplies what is the Hub's: its endpoint, its token (HF_TOKEN or the
one `hf auth login` saved), the file's metadata (size, sha256, CDN location) and its
errors; download.py moves the bytes, so a rerun resumes and every file is verified.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from llamadoc import __version__
from llamadoc.config import HfRef, Settings
from llamadoc.errors import DownloadError, ModelError
from llamadoc.registry import download
from llamadoc.registry.download import Notify

_SHA256 = re.compile(r"[0-9a-f]{64}")
_LOGIN = "log in with `hf auth login` or set HF_TOKEN"


def store_path(settings: Settings, ref: HfRef) -> Path:
    folder = settings.models_dir / "huggingface" / ref.repo_id
    if ref.revision != "main":
        folder = folder / f"@{ref.revision}"
    return folder / ref.filename


def provenance_path(path: Path) -> Path:
    """<file>.source.json: where a downloaded or converted file came from, and at which revision."""
    return path.with_name(path.name + ".source.json")


def write_provenance(path: Path, record: dict[str, object]) -> None:
    try:
        provenance_path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    except OSError as err:
        raise download.write_error(err, path.parent) from None


def revision(path: Path) -> str | None:
    """The source revision (a commit) a file was fetched or converted from, when it is known."""
    try:
        record = json.loads(provenance_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("revision"), str):
        return str(record["revision"])
    # A file in the Hub's cache sits in snapshots/<commit>/.
    parent = path.parent
    if parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parent.name):
        return parent.name
    return None


def sidecar_path(path: Path) -> Path:
    """<file>.sha256, in sha256sum's format: the digest a download was verified against."""
    return path.with_name(path.name + ".sha256")


def cached_path(settings: Settings, ref: HfRef) -> Path | None:
    """The file in huggingface_hub's own cache, when another tool downloaded it there."""
    if settings.hf_cache is None or not settings.hf_cache.is_dir():
        return None
    # Imported here: huggingface_hub is only needed for models from the Hub.
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=settings.hf_cache, revision=ref.revision)
    return Path(found) if isinstance(found, str) else None


def known_sha256(path: Path) -> str | None:
    """The digest a file must have: from its sidecar, or the name of its blob in the Hub's cache."""
    try:
        digest = sidecar_path(path).read_text(encoding="ascii").split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        digest = path.resolve().name  # the Hub's cache names large-file blobs by their sha256
    return digest if _SHA256.fullmatch(digest) else None


def gated_error(settings: Settings, repo_id: str, refused: bool) -> ModelError:
    """One line for a gated repository: where to accept the licence, and how to log in."""
    page = f"{settings.hf_endpoint}/{repo_id}"
    if refused:
        return ModelError(
            f"{repo_id} is gated and your Hugging Face token was refused: accept the licence at {page} "
            "with that token's account (access can take a while to be granted), or log in anew with `hf auth login`"
        )
    return ModelError(
        f"{repo_id} is gated: accept the licence at {page}, then log in with `hf auth login` (or set HF_TOKEN)"
    )


def token(settings: Settings) -> str | None:
    """The token a request would carry: HF_TOKEN, or the one `hf auth login` saved."""
    from huggingface_hub import get_token

    return settings.hf_token or get_token()


@contextmanager
def hub_errors(settings: Settings, repo_id: str, what: str, url: str) -> Iterator[None]:
    """huggingface_hub's errors -> llamadoc's, each one line that says what to do."""
    # Imported here: huggingface_hub (and httpx2, the HTTP client it depends on) load only for Hub downloads.
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = urlsplit(settings.hf_endpoint).netloc
    page = f"{settings.hf_endpoint}/{repo_id}"
    try:
        yield
    except GatedRepoError as err:
        raise gated_error(settings, repo_id, refused=err.response.status_code == 403) from None
    except RepositoryNotFoundError as err:
        raise download.NotFound(
            f"repository {repo_id} was not found on {host}, or it is private (HTTP {err.response.status_code})",
            hint=f"check the source in models.toml; for a private repository {_LOGIN}",
        ) from None
    except RevisionNotFoundError:
        raise download.NotFound(
            f"that revision of {repo_id} was not found", hint="check the @revision in models.toml"
        ) from None
    except RemoteEntryNotFoundError:
        raise download.NotFound(f"{repo_id} has no file {what!r}", hint=f"check the file name against {page}") from None
    except HfHubHTTPError as err:
        raise download.http_error(err.response.status_code, f"{what} from {host}", _hints(page)) from None
    except OfflineModeIsEnabled:
        raise DownloadError(
            f"cannot download {what}: huggingface_hub is in offline mode", hint="unset HF_HUB_OFFLINE"
        ) from None
    except httpx2.TransportError as err:
        raise download.network_error(err, url, what) from None


def fetch(settings: Settings, ref: HfRef, target: Path, pinned: str | None, notify: Notify) -> Path:
    """Download one file of a repository to ``target``, verified against its sha256."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # public, lazily exported

    host = urlsplit(settings.hf_endpoint).netloc
    page = f"{settings.hf_endpoint}/{ref.repo_id}"
    url = hf_hub_url(ref.repo_id, ref.filename, revision=ref.revision, endpoint=settings.hf_endpoint)
    hf_token = settings.hf_token  # None: huggingface_hub reads HF_TOKEN or its saved login
    with hub_errors(settings, ref.repo_id, ref.filename, url):
        meta = get_hf_file_metadata(
            url, token=hf_token, endpoint=settings.hf_endpoint, library_name="llamadoc", library_version=__version__
        )

    expected = pinned
    if meta.etag and _SHA256.fullmatch(meta.etag):
        if pinned and meta.etag != pinned:
            raise DownloadError(
                f"models.toml pins sha256 {pinned[:12]}... for {ref}, but the Hub now serves {meta.etag[:12]}...",
                hint="the file changed upstream: update the sha256, or pin a revision (hf://owner/repo@commit/file)",
            )
        expected = meta.etag  # the Hub names large files by their sha256
    private = build_hf_headers(token=hf_token, library_name="llamadoc", library_version=__version__)
    if _origin(meta.location) != _origin(url):
        private.pop("authorization", None)  # a signed CDN URL carries its own authority
    if known_sha256(target) not in (None, expected):
        # The file changed upstream since an interrupted download: its bytes are not a prefix of the new one.
        download.partial_path(target).unlink(missing_ok=True)
    if expected:
        # Written first, so that a file never sits in place without the digest it was checked against.
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            sidecar_path(target).write_text(f"{expected}  {target.name}\n", encoding="ascii")
        except OSError as err:
            raise download.write_error(err, target.parent) from None
    else:
        sidecar_path(target).unlink(missing_ok=True)
    remote = download.Remote(
        url=meta.location,
        label=f"{ref.filename} from {host}/{ref.repo_id}",
        sha256=expected,
        size=meta.size,
        headers=private,
        hints=_hints(page),
    )
    download.fetch(remote, target, notify)
    if meta.commit_hash:
        write_provenance(target, {"source": str(ref), "revision": meta.commit_hash})
    return target


def _hints(page: str) -> dict[int, str]:
    return {
        401: f"{_LOGIN}, with a token that may read this repository",
        403: f"your token may not read this repository: check its permissions and the licence at {page}",
        404: f"check the source in models.toml against {page}",
    }


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()
