"""The pipeline's own cost per page, outside the model: rasterise, hash, checks, write.

    python benchmarks/page_overhead.py [--repeat 3]

Extracts the invoice schema from the real invoices in ../shared/corpus/invoice2data
with the generated tiny model (so model time is small and overhead shows), the
guard off and --embedded ignore, writing one JSON file per document as `-o` does.
Overhead per page = (wall time of the batch - time inside the model) / pages.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamadoc.files import write_atomic  # noqa: E402
from llamadoc.guard import GuardPolicy  # noqa: E402
from llamadoc.inputs.sources import collect  # noqa: E402
from llamadoc.outputs import render  # noqa: E402
from llamadoc.reader import Reader  # noqa: E402
from llamadoc.tasks import Extract  # noqa: E402
from tests import tinymodels  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "invoice2data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="passes over the corpus (distinct runs)")
    args = parser.parse_args()
    task = Extract.from_file(ROOT / "examples" / "invoice.yaml", embedded="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tinymodels.write_text_model(root / "m.gguf")
        mmproj = tinymodels.write_mmproj(root / "p.gguf")
        sources = collect([str(p) for p in sorted(CORPUS.glob("*.pdf"))])
        with Reader(str(model), mmproj=str(mmproj), threads=1, guard=GuardPolicy(mode="off")) as reader:
            options = reader.run_options(max_tokens=256)
            list(reader.run(task, sources[:1], options, force=True))  # warm-up: load the model
            pages = 0
            model_ms = raster_ms = 0.0
            started = time.perf_counter()
            for _ in range(args.repeat):
                for doc in reader.run(task, sources, options, force=True):
                    write_atomic(root / "out" / f"{Path(doc.source).stem}.json", render.to_json(doc))
                    for page in doc.pages:
                        pages += 1
                        model_ms += page.timings_ms.get("model", 0.0)
                        raster_ms += page.timings_ms.get("raster", 0.0)
            wall_ms = (time.perf_counter() - started) * 1000
    overhead = (wall_ms - model_ms) / pages
    print(f"pages {pages}, wall {wall_ms / pages:.1f} ms/page, model {model_ms / pages:.1f} ms/page")
    print(f"overhead outside the model: {overhead:.1f} ms/page ({overhead / (model_ms / pages):.2f}x model time)")
    print(f"rasterising (on the worker thread, overlapped): {raster_ms / pages:.1f} ms/page")


if __name__ == "__main__":
    main()
