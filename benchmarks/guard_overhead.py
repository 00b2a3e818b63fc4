"""Pages per second with the guard off and on (block), in one run, on generated models.

    python benchmarks/guard_overhead.py [--pages 24] [--width 64] [--threads 1]

Both runs read the same PDF with the same vision model; the guard run (in flag
mode, so that no page is withheld and every page costs the same) adds Llama Guard
checks of the prompt, each page's text layer and each answer, with an empty verdict
cache. The guard's input checks run on the rasterising thread, overlapping the
vision model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamadoc.guard import GuardPolicy  # noqa: E402
from llamadoc.inputs.sources import collect  # noqa: E402
from llamadoc.reader import Reader  # noqa: E402
from llamadoc.tasks import Ask  # noqa: E402
from tests import tinymodels  # noqa: E402
from tests.conftest import make_pdf  # noqa: E402


def run(reader: Reader, pdf: Path) -> tuple[float, int]:
    options = reader.run_options(dpi=40, max_tokens=32)
    started = time.perf_counter()
    [doc] = list(reader.run(Ask("What does this page report?"), collect([str(pdf)]), options))
    assert all(p.status.value == "ok" for p in doc.pages), [p.errors for p in doc.pages]
    return time.perf_counter() - started, len(doc.pages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=24)
    parser.add_argument("--width", type=int, default=64, help="text width of both generated models")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tinymodels.write_text_model(root / "m.gguf", width=args.width, n_layer=4)
        mmproj = tinymodels.write_mmproj(root / "p.gguf", text_width=args.width)
        guard = tinymodels.write_guard_model(root / "g.gguf")
        os.environ["LLAMADOC_HOME"] = str(root / "home")  # a fresh verdict cache
        warm = make_pdf(root / "warm.pdf", ["warm-up page"])
        pdf = make_pdf(root / "doc.pdf", [f"Page {i}: revenue grew {i}% in region {i % 4}" for i in range(args.pages)])
        rows = []
        for label, policy in (("guard off", GuardPolicy(mode="off")),
                              ("guard on", GuardPolicy(mode="flag", model=str(guard)))):
            with Reader(str(model), mmproj=str(mmproj), threads=args.threads, guard=policy) as reader:
                run(reader, warm)  # loads both models; first-call costs
                elapsed, pages = run(reader, pdf)
            rows.append((label, pages / elapsed))
    base = rows[0][1]
    print(f"{'setting':<12} {'pages/s':>8} {'vs off':>7}")
    for label, rate in rows:
        print(f"{label:<12} {rate:8.1f} {rate / base:7.2f}")


if __name__ == "__main__":
    main()
