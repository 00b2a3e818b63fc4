"""Peak memory (RSS) of a whole CLI run over a long PDF and a large folder.

    python benchmarks/batch_memory.py [--pages 500] [--documents 1000]

Each run is a fresh `python -m llamadoc describe` process on the generated tiny
model (so the model is small and what grows, if anything, is the pipeline); a
small run of the same kind is measured beside it, so the table shows whether
memory grows with the input.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import tinymodels  # noqa: E402
from tests.conftest import make_pdf  # noqa: E402


def long_pdf(path: Path, pages: int) -> Path:
    return make_pdf(path, [f"Page {i}\nQuarterly figures, region {i % 7}: {i * 13} units" for i in range(pages)])


def folder(path: Path, documents: int) -> Path:
    path.mkdir()
    one = long_pdf(path / "doc0000.pdf", 1).read_bytes()
    for i in range(1, documents):  # distinct bytes, so nothing is deduplicated
        (path / f"doc{i:04d}.pdf").write_bytes(one + f"\n%{i}\n".encode())
    return path


def peak_rss(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child process, from its own rusage."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "llamadoc", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"llamadoc {' '.join(args[:2])} exited {child.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--documents", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = tinymodels.write_text_model(root / "m.gguf")
        mmproj = tinymodels.write_mmproj(root / "p.gguf")
        common = ["--model", str(model), "--mmproj", str(mmproj), "--threads", "1", "--guard", "off",
                  "--max-tokens", "8", "--format", "json", "--quiet"]
        env = os.environ | {"LLAMADOC_HOME": str(root / "home")}
        cases = [
            ("PDF, 10 pages", [str(long_pdf(root / "short.pdf", 10))], 10),
            (f"PDF, {args.pages} pages", [str(long_pdf(root / "long.pdf", args.pages))], args.pages),
            ("folder, 10 documents", [str(folder(root / "small", 10))], 10),
            (f"folder, {args.documents} documents", [str(folder(root / "big", args.documents))], args.documents),
        ]
        print(f"{'input':<24} {'peak RSS MiB':>12} {'seconds':>8} {'pages/s':>8}")
        for label, inputs, pages in cases:
            out = root / f"out-{len(label)}-{pages}"
            rss, seconds = peak_rss(["describe", *inputs, *common, "-o", str(out)], env)
            print(f"{label:<24} {rss:12.0f} {seconds:8.1f} {pages / seconds:8.1f}")


if __name__ == "__main__":
    main()
