"""The third face: the same batch on a Ray cluster (Ray Data over an actor pool of model workers).

    import llamadoc, llamadoc.ray
    with llamadoc.Reader() as reader:
        report = llamadoc.ray.run_batch(reader, Extract(schema), ["invoices/"],
                                        output=OutputSpec(Path("out")), cluster=Cluster("auto", workers=(2, 8)))

The driver (this process) lists the documents, hashes them, and sets aside duplicates,
documents the result store already finished and documents another run holds; Ray Data
reads and prepares the rest on CPU workers (open, plan, rasterise, screen), an actor
pool of model workers answers them (each holds one engine and the guard), and the
driver writes each result and the store as it arrives. The batch around that (source
listing, output check, writer, claims, report) is Reader.run_batch's own, so a local
run and a Ray run over the same -o agree on what is finished.

Ray itself is imported only when a batch runs on it: `llamadoc --help` never loads it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from llamadoc.batch.options import RunOptions
from llamadoc.errors import UsageError
from llamadoc.inputs.sources import Source
from llamadoc.outputs.report import DEFAULT_FAIL_ON, Report
from llamadoc.outputs.writer import OutputSpec
from llamadoc.ray.cluster import INSTALL, Cluster
from llamadoc.reader import Events, Reader, Selection
from llamadoc.tasks import Task


def run_batch(
    reader: Reader,
    task: Task,
    documents: Sequence[str | Path] | Sequence[Source],
    options: RunOptions | None = None,
    *,
    output: OutputSpec | None = None,
    select: Selection | None = None,
    fail_on: frozenset[str] = DEFAULT_FAIL_ON,
    force: bool = False,
    events: Events | None = None,
    stdin: BinaryIO | None = None,
    cluster: Cluster | None = None,
) -> Report:
    """Reader.run_batch with the documents read on a Ray cluster: the same arguments, the
    same Report. Documents may also be URIs pyarrow reads (s3://, gs://, file://).
    Results arrive as documents finish, not in the order given."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError("llamadoc.ray needs Ray, which is not installed", hint=INSTALL)
    from llamadoc.ray.driver import RayRunner
    from llamadoc.ray.uris import expand

    given = expand(reader, documents, select or Selection(), stdin)
    return reader.run_batch(task, given, options, output=output, select=select, fail_on=fail_on, force=force,
                            events=events, stdin=stdin, runner=RayRunner(reader, cluster or Cluster()))


__all__ = ["Cluster", "run_batch"]
