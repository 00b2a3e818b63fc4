"""The driver of a Ray batch: what Reader.run does locally, with the documents read on Ray.

Here: hash and admit each document (prefetch.Gate: duplicates, the result store,
claims), finish those no worker needs to read, and keep each result in the store as it
arrives. On the cluster, one Ray Data pipeline: the admitted documents -> Prepare (CPU
workers) -> Answer (an actor pool of model workers) -> rows streamed back here.

Retries are Ray's: a model worker that dies (OOM, a lost node, kill -9) is restarted
and its batch run again, at most RETRIES times each. The driver drops an answer for a
document it already has, so a retried batch never writes a document twice; a batch
still lost after its retries stops the run (ClusterError), and the next run resumes
from the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llamadoc import engines
from llamadoc.batch.options import RunOptions
from llamadoc.batch.pipeline import DocState, Finished, ModelStep, known_result
from llamadoc.batch.prefetch import Admitted, Gate, Known
from llamadoc.codec import from_dict
from llamadoc.errors import ClusterError, UsageError
from llamadoc.inputs.sources import Source
from llamadoc.models.base import ModelSettings
from llamadoc.models.local import LocalModels
from llamadoc.ray.cluster import Cluster
from llamadoc.ray.workers import Answer, Prepare, unpack_error
from llamadoc.reader import Reader
from llamadoc.results import DocumentResult, PageResult, Status
from llamadoc.store import RunIdentity, Store
from llamadoc.tasks import Task

if TYPE_CHECKING:
    from ray.data import Dataset

RETRIES = 3  # restarts of a dead worker, and runs of the batch it held
# One document per Prepare call, up to this many: small batches stream document by
# document, large ones keep Ray's bookkeeping bounded.
MAX_BLOCKS = 1000


@dataclass(frozen=True)
class Pool:
    """The model workers a run asks Ray for."""

    low: int
    high: int
    cpus: float
    gpus: int  # per worker: 1 on a cluster with GPUs (and layers to offload), else 0
    threads: int  # the engine's, in each worker


class RayRunner:
    """A Runner for Reader.run_batch that reads the documents on a Ray cluster."""

    def __init__(self, reader: Reader, cluster: Cluster) -> None:
        if not isinstance(reader.models, LocalModels):
            raise UsageError("a Ray batch loads its models on the cluster's workers, not from a server",
                             hint="drop --server (or LLAMADOC_HOST), or run without --ray")
        self.reader = reader
        self.spec = reader.models.spec  # what each worker loads its own models from
        self.cluster = cluster

    def __call__(self, task: Task, sources: Sequence[Source], options: RunOptions | None, *, force: bool,
                 store: Store, claim: Callable[[str], bool],
                 on_page: Callable[[PageResult], None]) -> Iterator[DocumentResult]:
        reader = self.reader
        options = reader.complete(options)
        identity = reader.identity(task, options)
        results = Finished(store, identity, force)
        gate = Gate(results.lookup, claim)
        # Finishes the documents no worker reads (unreadable here, or left to another run):
        # it never calls the engine for them.
        step = ModelStep(reader.models, task, options, identity=identity, guard=reader.guard)
        first: dict[str, DocumentResult] = {}  # by hash, for duplicates
        waiting: dict[str, list[Known]] = {}  # duplicates of documents still on the cluster
        todo: list[Admitted] = []
        for source in sources:
            item = gate.admit(source)
            if isinstance(item, Admitted):
                todo.append(item)
            elif isinstance(item, Known) and item.stored is None and item.sha256 not in first:
                waiting.setdefault(item.sha256, []).append(item)
            else:
                doc = known_result(item, first) if isinstance(item, Known) else step.finish(DocState(item))
                if doc.sha256 and doc.status is not Status.SKIPPED:
                    first.setdefault(doc.sha256, doc)
                yield doc
        if not todo:
            return
        if task.schema is not None:
            engines.check_grammar(task.schema)  # exit 2 here, not once per worker
        spec = self.spec
        batch = engines.vision_engine_class(reader.models.resolve().engine).max_batch
        with _session(self.cluster, spec.verbose):
            pool = _pool(self.cluster, spec)
            for doc in _stream(_dataset(todo, spec, batch, task, options, identity, pool)):
                if doc.sha256 is None or doc.sha256 in first:
                    continue  # a retried batch's second answer: the first was written
                results.keep(doc)
                first[doc.sha256] = doc
                for page in doc.pages:
                    if page.status is not Status.SKIPPED:
                        on_page(page)
                yield doc
                for duplicate in waiting.pop(doc.sha256, []):
                    yield known_result(duplicate, first)


@contextlib.contextmanager
def _session(cluster: Cluster, verbose: bool) -> Iterator[None]:
    """Connected to the cluster for the run; a session the caller opened (ray.init) is theirs to end."""
    import ray
    import ray.data

    # Ray Data logs each run on stderr; its log file in the Ray session keeps that, and our
    # own lines say what went wrong.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.INFO if verbose else logging.CRITICAL)
    if ray.is_initialized():
        yield
        return
    # Ray's core installs its own SIGTERM handler (a crash dump, then exit 15): the caller's
    # handlers (the CLI's: stop between pages, exit 130) are put back once it is up.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=None if cluster.address == "local" else cluster.address, include_dashboard=False,
                 log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot reach the Ray cluster at {cluster.address}: {_first_line(err)}",
                           hint="start it with `ray start --head`, or use --ray local") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for number, previous in handlers.items():
                if previous is not None:  # None: not set from Python, nothing to put back
                    signal.signal(number, previous)
    try:
        yield
    finally:
        ray.shutdown()


def _pool(cluster: Cluster, spec: ModelSettings) -> Pool:
    """One worker per GPU when the cluster has GPUs (and the model offloads layers), else one;
    refused before it starts when this machine's instance could never hold the pool."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if spec.gpu_layers != 0 else 0
    low, high = cluster.workers or ((gpus, gpus) if gpus else (1, 1))
    if cluster.address == "local":
        cpus = resources.get("CPU", 0.0)
        if low * cluster.cpus_per_worker + 1 > cpus:  # and one CPU for preparing pages
            raise UsageError(f"this machine's Ray instance has {cpus:g} CPUs: {low} workers of "
                             f"{cluster.cpus_per_worker:g} CPUs and one to prepare pages do not fit",
                             hint="use fewer --workers or a smaller --cpus-per-worker (fractions work)")
        if gpus and low > gpus:
            raise UsageError(f"this machine has {gpus} GPUs for {low} workers of one GPU each",
                             hint=f"use --workers {gpus} or fewer")
    threads = spec.threads or max(1, int(cluster.cpus_per_worker))
    return Pool(low, high, cluster.cpus_per_worker, 1 if gpus else 0, threads)


def _dataset(todo: Sequence[Admitted], spec: ModelSettings, batch: int, task: Task, options: RunOptions,
             identity: RunIdentity, pool: Pool) -> Dataset:
    import ray.data
    from ray.util.annotations import RayDeprecationWarning

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the face shows its own progress
    context.print_on_execution_start = False
    # A pipe's content lives in an unnamed file of this process: the worker gets the bytes.
    rows = [{"sha256": a.sha256, "source": pickle.dumps(_portable(a.source))} for a in todo]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS)).map(
        Prepare,  # type: ignore[arg-type]  # Ray's annotations do not admit callable classes, its docs do
        fn_constructor_kwargs=dict(spec=spec, task=task, options=options),
        compute=ray.data.ActorPoolStrategy(min_size=1), num_cpus=1,
    )
    with warnings.catch_warnings():
        # Bounded retries have no named parameter in Ray 2.60; its remote args still carry them.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return ds.map_batches(
            Answer, fn_constructor_kwargs=dict(spec=replace(spec, threads=pool.threads), task=task,
                                               options=options, identity=identity),
            batch_size=batch,  # what one worker's engine decodes together
            compute=ray.data.ActorPoolStrategy(min_size=pool.low, max_size=pool.high),
            num_cpus=pool.cpus, num_gpus=pool.gpus or None, max_restarts=RETRIES, max_task_retries=RETRIES,
        )


def _stream(ds: Dataset) -> Iterator[DocumentResult]:
    """Results as the cluster finishes them; a run-wide error is raised as the local run raises it."""
    from ray.exceptions import RayError

    rows = iter(ds.iter_rows())
    while True:
        try:
            row: dict[str, Any] = next(rows)
        except StopIteration:
            return
        except RayError as err:
            raise ClusterError(f"the Ray batch stopped: {_first_line(err)}",
                               hint="finished documents are kept; run it again to resume") from None
        if len(row["error"]):
            raise unpack_error(bytes(row["error"]))
        yield from_dict(json.loads(row["result"]))


def _portable(source: Source) -> Source:
    if source.spool is not None:
        return Source(label=source.label, data=source.read_bytes(), rel=source.rel)
    return source


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
