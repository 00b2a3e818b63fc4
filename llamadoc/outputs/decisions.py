"""A person's review of a finished batch, kept beside its results and never over them.

``OUT/.review/`` holds:

- ``decisions/<id>.json``: each reviewed document's latest decision (approved or rejected),
  the record as the person approved it, the values they changed, their note, who and when;
  written atomically, so a crash leaves the old decision or the new one, never half of one;
- ``audit.jsonl``: every decision and every changed value, appended and never rewritten: who
  (the OS user), when, the document, the field, old -> new, approve or reject;
- ``locks/``: a lock per document, as the batch's claims (outputs/writer.py Claims), so two
  reviewers never write one document's decision at once.

The model's result file is never written here. A document's id is a hash of where its result
lives below OUT (the file, and the line of a .jsonl), so no path ever travels in a URL. A
decision names the digest of the result it was made on: when the batch is run again and the
result changes, the decision is stale, and neither the page nor an export takes its values.
Here, not in review/: `llamadoc export` (outputs) reads the decisions too, and a face may only
import downwards.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llamadoc.errors import ExitCode, OutputError
from llamadoc.files import write_atomic
from llamadoc.outputs.writer import STATE_DIR
from llamadoc.results import DocumentResult

REVIEW_DIR = ".review"  # inside OUT, beside the results; a dot folder, as no input mirrors to it
# In each folder `llamadoc export` writes (by default OUT/export): its tables are not results,
# and a folder of results mirrored from an input folder named "export" still is one.
EXPORT_MARK = ".llamadoc-export"
DECISIONS = ("approved", "rejected")
ACTIONS = {"approved": "approve", "rejected": "reject"}  # as the audit log names them
LOCK_WAIT_S = 10.0  # a decision being written by another reviewer is waited for this long
FORMAT = 1  # of a decision file


class DecisionError(OutputError):
    """A decision file that cannot be read, or a decision that cannot be taken (exit 1)."""

    exit_code = ExitCode.FAILED


class Conflict(DecisionError):
    """Another reviewer decided the document after this one opened it."""


def who() -> str:
    """The OS user: the audit log's "who". Some containers run as a uid without a name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the results of an -o folder --------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One result as it lies in OUT: ``key`` is its file below OUT ("a.json", or "b.jsonl#2" for the
    second line of a .jsonl), ``id`` the hash of the key, ``digest`` the hash of its text."""

    key: str
    path: Path
    text: str

    @property
    def id(self) -> str:
        return document_id(self.key)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def document_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def result_files(folder: Path) -> Iterator[Path]:
    """The .json and .jsonl files below an -o folder that may be results, in name order: not the
    result store's, not the review's."""
    for rel, _ in result_stats(folder):
        yield folder / rel


def result_stats(folder: Path) -> list[tuple[str, os.stat_result]]:
    """result_files as paths relative to ``folder`` (POSIX), each with its stat, read as the
    folder is listed: one pass of scandir and no Path per file, as this is what a page that
    asks again for a 2,000-document queue costs."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [("", str(folder))]
    while pending:
        prefix, here = pending.pop()
        try:
            listed = list(os.scandir(here))
        except OSError:
            continue
        for item in listed:
            try:
                if item.is_dir(follow_symlinks=False):  # as rglob: a link to a folder is not walked
                    if (item.name != STATE_DIR and not (not prefix and item.name == REVIEW_DIR)
                            and not os.path.exists(os.path.join(item.path, EXPORT_MARK))):
                        pending.append((f"{prefix}{item.name}/", item.path))
                elif item.name.endswith((".json", ".jsonl")) and item.is_file():
                    found.append((prefix + item.name, item.stat()))
            except OSError:
                continue
    found.sort(key=lambda pair: pair[0].split("/"))
    return found


def entries(folder: Path, path: Path, text: str) -> list[Entry]:
    """The results of one file: the file itself, or each non-empty line of a .jsonl."""
    key = path.relative_to(folder).as_posix()
    if path.suffix != ".jsonl":
        return [Entry(key, path, text)]
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) == 1:
        return [Entry(key, path, lines[0])]
    return [Entry(f"{key}#{n}", path, line) for n, line in enumerate(lines, 1)]


# -- decisions ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """What a person decided about one document."""

    id: str
    result: str  # the Entry's key
    source: str
    result_sha256: str  # the result it was made on
    decision: str  # "approved" | "rejected"
    fields: dict[str, Any] | None  # the record with the person's changes
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {"old", "new"}
    note: str = ""
    by: str = ""
    at: str = ""
    revision: int = 1  # 1 for the first decision on the document, one more for each later one

    def stale(self, digest: str) -> bool:
        """Made on another result than the one OUT holds now (the batch ran again since)."""
        return self.result_sha256 != digest

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "id": self.id, "result": self.result, "source": self.source,
                "result_sha256": self.result_sha256, "decision": self.decision, "fields": self.fields,
                "changed": self.changed, "note": self.note, "by": self.by, "at": self.at, "revision": self.revision}


def _decision(body: Any, where: Path) -> Decision:
    fix = f"move {where} away (its history is in the audit log) and decide the document again"
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise DecisionError(f"{where} is not a llamadoc review decision", hint=fix)
    try:
        made = Decision(id=body["id"], result=body["result"], source=body["source"],
                        result_sha256=body["result_sha256"], decision=body["decision"], fields=body["fields"],
                        changed=body["changed"], note=body["note"], by=body["by"], at=body["at"],
                        revision=body["revision"])
    except KeyError as err:
        raise DecisionError(f"{where} is a damaged review decision (no {err.args[0]!r})", hint=fix) from None
    if made.decision not in DECISIONS or not isinstance(made.revision, int) or not isinstance(made.changed, dict) \
            or not (made.fields is None or isinstance(made.fields, dict)) \
            or not all(isinstance(c, dict) and {"old", "new"} <= set(c) for c in made.changed.values()):
        raise DecisionError(f"{where} is a damaged review decision", hint=fix)
    return made


_NONE = object()  # no earlier value: unlike any JSON value, None included


class Decisions:
    """The decisions and audit log of one -o folder."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out / REVIEW_DIR
        self.log = self.dir / "audit.jsonl"
        self.locks = self.dir / "locks"
        self._seen: dict[str, tuple[tuple[int, int, int], Decision | None, str | None]] = {}  # all()'s, by id

    def path(self, doc_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{20}", doc_id):  # an id is a hash: nothing else names a file here
            raise DecisionError(f"{doc_id!r} is not a document id")
        return self.dir / "decisions" / f"{doc_id}.json"

    def get(self, doc_id: str) -> Decision | None:
        """The document's decision, None when it has none; DecisionError when its file is damaged."""
        path = self.path(doc_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise DecisionError(f"{path} cannot be read ({getattr(err, 'strerror', None) or err})") from None
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):
            raise DecisionError(f"{path} is not JSON: a damaged review decision",
                                hint=f"move {path} away (its history is in the audit log) and decide the "
                                     "document again") from None
        made = _decision(body, path)
        if made.id != doc_id:
            raise DecisionError(f"{path} holds the decision of another document ({made.id})",
                                hint=f"move {path} away and decide the document again")
        return made

    def all(self) -> tuple[dict[str, Decision], dict[str, str]]:
        """Every decision by document id, and for each damaged file, why it cannot be read. A file
        is read again only when it changed (the review page asks for all of them with its queue)."""
        found: dict[str, Decision] = {}
        damaged: dict[str, str] = {}
        try:
            listed = sorted(os.scandir(self.dir / "decisions"), key=lambda item: item.name)
        except OSError:
            return found, damaged
        seen: dict[str, tuple[tuple[int, int, int], Decision | None, str | None]] = {}
        for item in listed:
            if not item.name.endswith(".json"):
                continue
            doc_id = item.name[: -len(".json")]
            try:
                st = item.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # a decision is replaced whole: a new inode
            known = self._seen.get(doc_id)
            if known is None or known[0] != stamp:
                try:
                    known = (stamp, self.get(doc_id), None)
                except DecisionError as err:
                    known = (stamp, None, str(err))
            seen[doc_id] = known
            if known[2] is not None:
                damaged[doc_id] = known[2]
            elif known[1] is not None:
                found[known[1].id] = known[1]
        self._seen = seen
        return found, damaged

    def decide(self, entry: Entry, source: str, decision: str, fields: dict[str, Any] | None,
               changed: dict[str, dict[str, Any]], note: str = "", base: int = 0, by: str | None = None) -> Decision:
        """Record a decision on ``entry``'s document: each change and the decision go to the audit
        log, then the decision to its file. ``base`` is the revision the reviewer saw (0: none);
        when another reviewer decided since, Conflict, and nothing is written."""
        from filelock import FileLock, Timeout  # imported here: only a decision takes this lock

        if decision not in DECISIONS:
            raise DecisionError(f"{decision!r} is not a decision: approved or rejected")
        self.locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.locks / f"{entry.id}.decide.lock", timeout=LOCK_WAIT_S, thread_local=False)
        try:
            with lock:
                current = self.get(entry.id)
                seen = current.revision if current is not None else 0
                if seen != base:
                    assert current is not None
                    raise Conflict(f"{current.by} {current.decision} {source} at {current.at}, after you opened it",
                                   hint="reload the document to see their decision")
                made = Decision(id=entry.id, result=entry.key, source=source, result_sha256=entry.digest,
                                decision=decision, fields=fields, changed=changed, note=note, by=by or who(),
                                at=now(), revision=seen + 1)
                # The log first: a crash between the two leaves a logged decision without its file
                # (decided again), never a decision the log does not show.
                self._append(made, current if current is not None and not current.stale(entry.digest) else None)
                write_atomic(self.path(entry.id), json.dumps(made.to_json(), ensure_ascii=False, indent=1) + "\n")
        except Timeout:
            raise DecisionError(f"another reviewer has been writing a decision on {source} for {LOCK_WAIT_S:g} s",
                                hint="try again in a moment") from None
        except OSError as err:
            raise DecisionError(f"the decision on {source} cannot be written in {self.dir} "
                                f"({err.strerror or err})", hint="check that the folder can be written") from None
        return made

    def _append(self, made: Decision, before: Decision | None = None) -> None:
        """The decision's lines in the audit log: an edit for each value changed since ``before``
        (the decision it follows, on the same result: its edits were logged then), then the decision."""
        earlier = before.changed if before is not None else {}
        lines = [{"at": made.at, "by": made.by, "action": "edit", "document": made.source, "result": made.result,
                  "id": made.id, "field": path, "old": earlier[path]["new"] if path in earlier else change.get("old"),
                  "new": change.get("new")}
                 for path, change in made.changed.items()
                 if earlier.get(path, {}).get("new", _NONE) != change.get("new")]
        lines += [{"at": made.at, "by": made.by, "action": "edit", "document": made.source, "result": made.result,
                   "id": made.id, "field": path, "old": change.get("new"), "new": change.get("old")}
                  for path, change in earlier.items() if path not in made.changed]  # taken back to the model's
        lines.append({"at": made.at, "by": made.by, "action": ACTIONS[made.decision],
                      "document": made.source, "result": made.result, "id": made.id, "field": None,
                      "note": made.note, "revision": made.revision})
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        self.dir.mkdir(parents=True, exist_ok=True)
        # One write of whole lines with O_APPEND: the kernel puts it at the end even when another
        # process appends too, and the lines already there are never touched.
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def audit(self) -> list[dict[str, Any]]:
        """The audit log's lines, oldest first (a line a crash cut short is left out)."""
        try:
            text = self.log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def reviewed(doc: DocumentResult, made: Decision) -> DocumentResult:
    """The result as the person approved it: the approved record as its fields, and each value
    they changed with its new value. A rejected document keeps the model's values."""
    if made.decision != "approved" or made.fields is None:
        return doc
    values = [replace(v, value=made.changed[v.path]["new"]) if v.path in made.changed else v for v in doc.values]
    return replace(doc, fields=made.fields, values=values)
