"""The result document's JSON form read back: another version's entry is a miss, a bug is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamadoc import codec
from llamadoc.batch.pipeline import Finished
from llamadoc.results import DocumentResult, Status
from llamadoc.store import RunIdentity, Store


def _stored(tmp_path: Path) -> tuple[Finished, str]:
    store = Store(tmp_path / "results")
    finished = Finished(store, RunIdentity("describe", {}))
    doc = DocumentResult(source="a.pdf", task="describe", sha256="ab" * 32, status=Status.OK)
    finished.keep(doc)
    return finished, doc.sha256 or ""


def test_a_result_round_trips() -> None:
    doc = DocumentResult(source="a.pdf", task="describe", sha256="ab" * 32, status=Status.OK, page_count=2)
    assert codec.from_dict(codec.to_dict(doc)) == doc


@pytest.mark.parametrize("change", [
    lambda body: body | {"added_later": 1},
    lambda body: {k: v for k, v in body.items() if k != "warnings"},
    lambda body: body | {"status": "maybe"},
    lambda body: body | {"page_count": "2"},
], ids=["a field added", "a field missing", "an unknown status", "a number as text"])
def test_another_versions_entry_is_a_foreign_result(change) -> None:  # type: ignore[no-untyped-def]
    body = codec.to_dict(DocumentResult(source="a.pdf", task="describe", sha256="ab" * 32, status=Status.OK))
    with pytest.raises(codec.ForeignResult):
        codec.from_dict(change(body))
    assert not issubclass(codec.ForeignResult, ValueError)


def test_a_foreign_entry_is_a_miss_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finished, sha = _stored(tmp_path)
    assert finished.lookup(sha) is not None
    monkeypatch.setattr(codec, "_record", lambda *_a: (_ for _ in ()).throw(codec.ForeignResult("result: old")))
    assert finished.lookup(sha) is None
    assert finished.store is not None and finished.store.unreadable == 1


def test_a_bug_that_raises_valueerror_is_not_a_cache_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finished, sha = _stored(tmp_path)

    def bug(*_args: object) -> None:
        raise ValueError("a bug in the decoder")

    monkeypatch.setattr(codec, "_record", bug)
    with pytest.raises(ValueError, match="a bug in the decoder"):
        finished.lookup(sha)
