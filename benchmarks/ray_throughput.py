"""Pages per second of a batch on Ray (1 and 2 CPU model workers on this machine) against the
local pipeline, and the Ray path's cost per document.

    python -m benchmarks.ray_throughput --model tiny --pages 16 --rounds 3
    python -m benchmarks.ray_throughput --model cpu-mid --pages 4 --rounds 1
    python -m benchmarks.ray_throughput --overhead --pages 40 --rounds 3

Models: the synthetic mllama shapes of benchmarks/mllama_synth.py (random weights, real
shapes: speed does not depend on the values) or, with --overhead, the tests' tiny mtmd
model, whose pages cost milliseconds so that what Ray adds shows. Documents: one-page
PDFs, `describe` with the guard off, --force (every page read), no -o. Configurations,
run in interleaved rounds (the machine is shared: compare within one run):
- local: Reader.run_batch, the engine on all cores;
- ray-1: one model worker holding all cores;
- ray-2: two model workers of half the cores each.
Every Ray run includes starting its workers (each loads the model): that is what a
batch pays. The Ray instance itself is started once, before the rounds, with one
logical CPU more than the cores for the CPU worker that rasterises (it mostly waits).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks.mllama_synth import PRESETS, write_mllama
from llamadoc.batch.options import RunOptions
from llamadoc.guard import GuardPolicy
from llamadoc.inputs.raster import RasterOptions
from llamadoc.ray import Cluster, run_batch
from llamadoc.reader import Events, Reader
from llamadoc.results import DocumentResult
from llamadoc.tasks import Describe
from tests import tinymodels
from tests.conftest import make_pdf

OPTIONS = RunOptions(raster=RasterOptions(dpi=30), max_tokens=16)


def documents(root: Path, count: int) -> list[str]:
    folder = root / f"docs{count}"
    folder.mkdir(exist_ok=True)
    for i in range(count):
        make_pdf(folder / f"d{i:03d}.pdf", [f"Invoice {i}: total {i * 7}.00"])
    return [str(p) for p in sorted(folder.glob("*.pdf"))]


def timed(reader: Reader, docs: list[str], cluster: Cluster | None) -> tuple[float, int]:
    """Wall seconds and pages read of one batch: local (cluster None) or on Ray."""
    pages = 0

    def finished(doc: DocumentResult, _written: object, _problems: object) -> None:
        nonlocal pages
        pages += len(doc.pages_read)

    events = Events(on_document=finished)
    started = time.perf_counter()
    if cluster is None:
        reader.run_batch(Describe(), docs, OPTIONS, force=True, events=events)
    else:
        run_batch(reader, Describe(), docs, OPTIONS, force=True, events=events, cluster=cluster)
    return time.perf_counter() - started, pages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "cpu-mid"], default="tiny")
    parser.add_argument("--overhead", action="store_true", help="the per-document cost, with the tiny mtmd model")
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LLAMADOC_HOME"] = str(root / "home")
        if args.overhead:
            model = tinymodels.write_text_model(root / "m.gguf")
            reader_args: dict[str, object] = dict(mmproj=str(tinymodels.write_mmproj(root / "p.gguf")))
        else:
            model = root / f"{args.model}.gguf"
            write_mllama(model, PRESETS[args.model])
            reader_args = {}
        ray.init(num_cpus=cores + 1, object_store_memory=300 * 2**20, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        try:
            if args.overhead:
                overhead(model, reader_args, root, args)
            else:
                throughput(model, reader_args, root, args, cores)
        finally:
            ray.shutdown()


def reader_for(model: Path, reader_args: dict[str, object], threads: int) -> Reader:
    return Reader(str(model), threads=threads, guard=GuardPolicy(mode="off"), **reader_args)  # type: ignore[arg-type]


def throughput(model: Path, reader_args: dict[str, object], root: Path, args: argparse.Namespace, cores: int) -> None:
    docs = documents(root, args.pages)
    configs: dict[str, tuple[int, Cluster | None]] = {
        "local": (cores, None),
        "ray-1": (cores, Cluster("local", (1, 1), float(cores))),
        "ray-2": (max(1, cores // 2), Cluster("local", (2, 2), max(1.0, cores / 2))),
    }
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, (threads, cluster) in configs.items():
            with reader_for(model, reader_args, threads) as reader:
                wall, pages = timed(reader, docs, cluster)
            assert pages == args.pages
            rates[name].append(pages / wall)
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {cores} cores; model {args.model}, "
          f"{args.pages} one-page PDFs, {args.rounds} rounds")
    print("| run | pages/s (median) | vs local |\n|---|---|---|")
    base = statistics.median(rates["local"])
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f} |")


def overhead(model: Path, reader_args: dict[str, object], root: Path, args: argparse.Namespace) -> None:
    """Ray's fixed cost per batch (a batch of one) and its cost per further document."""
    small, large = documents(root, 1), documents(root, args.pages)
    walls: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for docs in (small, large):
            for name, cluster in (("local", None), ("ray", Cluster("local", (1, 1), 1.0))):
                with reader_for(model, reader_args, 1) as reader:
                    wall, _ = timed(reader, docs, cluster)
                walls.setdefault((name, len(docs)), []).append(wall)
    med = {k: statistics.median(v) for k, v in walls.items()}
    n = args.pages
    per_doc = {name: (med[(name, n)] - med[(name, 1)]) / (n - 1) * 1000 for name in ("local", "ray")}
    print(f"{date.today()}, {os.cpu_count()} cores; tiny mtmd model, 1 thread, batches of 1 and {n} one-page PDFs, "
          f"{args.rounds} rounds")
    print("| measure | local | ray (1 worker) |\n|---|---|---|")
    print(f"| batch of 1, wall s | {med[('local', 1)]:.2f} | {med[('ray', 1)]:.2f} |")
    print(f"| batch of {n}, wall s | {med[('local', n)]:.2f} | {med[('ray', n)]:.2f} |")
    print(f"| each further document, ms | {per_doc['local']:.1f} | {per_doc['ray']:.1f} |")
    print(f"| Ray's own cost per document, ms | | {per_doc['ray'] - per_doc['local']:.1f} |")


if __name__ == "__main__":
    main()
