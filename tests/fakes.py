"""A scripted engine for pipeline logic that a random-weight model cannot exercise
(a right answer on one page, a wrong one on another). Real-engine runs live in the
CLI tests; this stand-in only answers what it is told to."""

from __future__ import annotations

import queue
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from llamadoc.batch import pipeline
from llamadoc.batch.options import RunOptions
from llamadoc.batch.pipeline import Pipeline
from llamadoc.batch.prefetch import ALL_DONE, PageReady
from llamadoc.config import Settings
from llamadoc.engines.base import GenerationRequest, GenerationResponse, GuardOutput, JudgeRequest
from llamadoc.guard import Guard, GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.inputs.sources import collect
from llamadoc.models.base import EngineNeeds
from llamadoc.registry import ResolvedModel
from llamadoc.results import DocumentResult, ModelInfo
from llamadoc.tasks import Task


class ScriptedEngine:
    name = "scripted"
    max_images = 1
    max_batch = 1
    supports_schema = True
    gpu_layers = 0
    device = "CPU"

    def __init__(self, answer: Callable[[GenerationRequest, int], str]) -> None:
        self.answer = answer
        self.requests: list[GenerationRequest] = []
        self.batches: list[int] = []

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.requests.append(request)
        text = self.answer(request, len(self.requests))
        return GenerationResponse(text=text, prompt_tokens=10, completion_tokens=len(text.split()))

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        self.batches.append(len(requests))
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


class Waiting:
    """The pipeline's queue of prepared pages, watched, so an engine can wait for ``n`` of them.

    A batch holds the pages waiting when the engine is free; how many that is depends on
    how fast the machine rasterises. An engine that starts each call only once ``n``
    pages wait (or the queue is full, or every page is in) makes the batches the same on
    any machine, with no sleep to outrun the rasteriser."""

    def __init__(self, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = n
        self.changed = threading.Condition()
        self.pages = 0  # put and not yet taken
        self.full = self.finished = False
        watch = self

        class Watched(queue.Queue[Any]):
            # _put and _get run under the queue's own lock: the counts are exact, and the
            # lock order is always the queue's, then ours (the engine never takes the queue's).
            def _put(self, item: Any) -> None:
                super()._put(item)
                watch.seen(+isinstance(item, PageReady), full=self._qsize() >= self.maxsize, finished=item is ALL_DONE)

            def _get(self) -> Any:
                item = super()._get()
                watch.seen(-isinstance(item, PageReady), full=False)
                return item

        monkeypatch.setattr(pipeline, "queue", types.SimpleNamespace(Queue=Watched, Empty=queue.Empty))

    def seen(self, pages: int, full: bool, finished: bool = False) -> None:
        with self.changed:
            self.pages += pages
            self.full = full
            self.finished |= finished
            self.changed.notify_all()

    def wait(self) -> None:
        with self.changed:
            ready = self.changed.wait_for(lambda: self.pages >= self.n or self.full or self.finished, timeout=60)
        assert ready, f"{self.pages} pages waited for the engine, not {self.n}, and the rasteriser stopped"


class PatientEngine(ScriptedEngine):
    """A scripted engine that starts each call only once ``pages.n`` more pages wait for it."""

    def __init__(self, answer: Callable[[GenerationRequest, int], str], pages: Waiting) -> None:
        super().__init__(answer)
        self.pages = pages
        self.max_batch = pages.n

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.pages.wait()
        return super().generate(request)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResponse]:
        self.pages.wait()
        return super().generate_batch(requests)


class ScriptedGuard:
    """A guard engine that says what a rule tells it to, for forcing verdicts."""

    sees_images = False
    n_ctx = 4096

    def __init__(self, rule: Callable[[str], tuple[str, float]], model_name: str = "scripted-guard") -> None:
        self.rule = rule
        self.model_name = model_name
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def split(self, text: str, max_tokens: int) -> list[str]:
        words = text.split()
        return [" ".join(words[i : i + max_tokens]) for i in range(0, len(words), max_tokens)]

    def judge(self, request: JudgeRequest) -> GuardOutput:
        self.prompts.append(request.prompt)
        text, p_unsafe = self.rule(request.prompt.split("<BEGIN CONVERSATION>")[1])
        return GuardOutput(text=text, p_unsafe=p_unsafe)

    def close(self) -> None:
        pass


def guard_over(engine: ScriptedGuard, **policy: object) -> Guard:
    """A Guard over a scripted engine, as the Reader makes one over a real engine."""
    return Guard(load=lambda: engine, policy=GuardPolicy(**policy), name=engine.model_name)  # type: ignore[arg-type]


class ScriptedModels:
    """Models (llamadoc.models.base) over a scripted engine: the pipeline's seam, for its logic."""

    def __init__(self, engine: ScriptedEngine, guard: Guard | None = None) -> None:
        self.engine, self._guard = engine, guard
        self.loads = 0  # how often a run asked for the engine

    @property
    def settings(self) -> Settings:
        return Settings(home=Path("/nonexistent"), offline=True, ollama_registry="http://127.0.0.1:9")

    @property
    def policy(self) -> GuardPolicy:
        return self._guard.policy if self._guard else GuardPolicy(mode="off")

    def resolve(self) -> ResolvedModel:
        return ResolvedModel(name="scripted", engine="scripted", model_path=Path("-"))

    def sha256(self) -> str:
        return "0" * 64

    def vision_engine(self, needs: EngineNeeds) -> ScriptedEngine:
        self.loads += 1
        return self.engine

    def guard(self) -> Guard | None:
        return self._guard

    def info(self) -> ModelInfo:
        return ModelInfo(name="scripted", path="-", engine="scripted")

    def close(self) -> None:
        pass


def run_pipeline(engine: ScriptedEngine, task: Task, paths: Sequence[Path], options: RunOptions | None = None,
                 guard: Guard | None = None) -> list[DocumentResult]:
    """The pipeline over files, as the Reader runs it, with a scripted engine."""
    pipeline = Pipeline(ScriptedModels(engine, guard), task, options or RunOptions(raster=RasterOptions(dpi=20)),
                        guard=guard)
    return list(pipeline.run(collect([str(p) for p in paths])))
