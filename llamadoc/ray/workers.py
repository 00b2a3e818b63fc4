"""What runs on the cluster: Ray Data callable classes around the core's stages.

- Prepare (CPU workers): read one document, open, plan, rasterise and screen its pages
  (prefetch.Preparer), with a guard of its own on the CPU.
- Answer (the model workers: one engine and one guard each, on a GPU when there is
  one): answer the pages of a batch of documents (pipeline.ModelStep) and finish each
  document (combine, follow-up calls, status), as the local pipeline does.

Rows carry the core's own objects pickled (a Source in; its pages, then its result as
the codec's JSON, out). A run-wide error (the guard cannot run, the model does not
load) travels as data in an ``error`` column so the driver raises the very error a
local run would: Ray would otherwise hand it over stripped of its type.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from llamadoc.batch.options import RunOptions
from llamadoc.batch.pipeline import DocState, ModelStep, skipped_page
from llamadoc.batch.prefetch import DocFailed, DocStart, PageReady, PageSkipped, Preparer
from llamadoc.codec import to_dict
from llamadoc.errors import LlamadocError
from llamadoc.inputs.sources import Source
from llamadoc.models.base import ModelSettings
from llamadoc.models.local import LocalModels
from llamadoc.store import RunIdentity
from llamadoc.tasks import Task

Prepared = tuple[DocStart | DocFailed, list[PageReady | PageSkipped]]


def pack_error(err: LlamadocError) -> bytes:
    """An error as data; ``raise unpack_error(blob)`` raises an equal one (its hint included)."""
    return pickle.dumps((type(err), err.message, err.hint))


def unpack_error(blob: bytes) -> LlamadocError:
    cls, message, hint = pickle.loads(blob)
    error: LlamadocError = cls(message, hint=hint)
    return error


class Prepare:
    """A CPU worker ahead of the model workers: one document in, its prepared pages out."""

    def __init__(self, spec: ModelSettings, task: Task, options: RunOptions) -> None:
        # Nothing that can fail happens here: Ray would retry a failed constructor and then
        # report it without its message. The guard resolves on the first document.
        self.spec, self.task, self.options = spec, task, options
        self._preparer: Preparer | None = None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            if self._preparer is None:
                # A CPU worker: its guard runs on the CPU, on one thread per reserved CPU.
                models = LocalModels(replace(self.spec, gpu_layers=0, threads=1))
                self._preparer = Preparer(self.task, self.options.raster, models.guard())
            source: Source = pickle.loads(row["source"])
            prepared = _prepared(list(self._preparer.prepare(source, row["sha256"])))
        except LlamadocError as err:
            return {"sha256": row["sha256"], "prepared": b"", "error": pack_error(err)}
        return {"sha256": row["sha256"], "prepared": pickle.dumps(prepared), "error": b""}


def _prepared(items: list[Any]) -> Prepared:
    """The Preparer's stream as one value: the document's head and its pages."""
    failed = next((i for i in items if isinstance(i, DocFailed)), None)
    head = failed or items[0]
    assert isinstance(head, DocStart | DocFailed)
    # The worker only names the source: its bytes stay behind.
    head.source = Source(label=head.source.label)
    pages = [i for i in items if isinstance(i, PageReady | PageSkipped)] if failed is None else []
    return head, pages


class Answer:
    """A model worker: the engine and the guard, loaded on the first batch and kept."""

    def __init__(self, spec: ModelSettings, task: Task, options: RunOptions, identity: RunIdentity) -> None:
        self.spec, self.task, self.options, self.identity = spec, task, options, identity
        self._step: ModelStep | None = None

    def _model_step(self) -> ModelStep:
        if self._step is None:
            models = LocalModels(self.spec)
            self._step = ModelStep(models, self.task, self.options, identity=self.identity, guard=models.guard())
        return self._step

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        shas: Sequence[str] = [str(s) for s in batch["sha256"]]
        failed = next((bytes(e) for e in batch["error"] if len(e)), None)
        if failed is None:
            try:
                results = self._answer([pickle.loads(p) for p in batch["prepared"]])
                return {"sha256": list(shas), "result": results, "error": [b""] * len(shas)}
            except LlamadocError as err:
                failed = pack_error(err)
        return {"sha256": list(shas), "result": [""] * len(shas), "error": [failed] * len(shas)}

    def _answer(self, prepared: list[Prepared]) -> list[str]:
        step = self._model_step()
        states, work = [], []
        for head, pages in prepared:
            state = DocState(head, ended=True)
            for page in pages:
                if isinstance(page, PageSkipped):
                    state.pages[page.index] = skipped_page(page)
                else:
                    state.in_flight += 1
                    work.append((state, page))
            states.append(state)
        batch = step.engine().max_batch if work else 1
        for start in range(0, len(work), batch):  # pages of several documents together, as locally
            step.answer(work[start:start + batch])
        return [json.dumps(to_dict(step.finish(state)), ensure_ascii=False) for state in states]
