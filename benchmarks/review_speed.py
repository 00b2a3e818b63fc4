"""The review page over a 2,000-document batch: how long until a person sees the first document,
and how long each step of the keyboard path takes.

    python benchmarks/review_speed.py [--documents 2000] [--runs 5]

The batch: the five documents of tests/review_helpers.py read by the real pipeline (a scripted
engine, so each value has its evidence, confidence and checks), their result files copied to
DOCUMENTS result files (about 36 KB each, as a model's batch writes them), each naming a copy
of its PDF of its own, so every page image is drawn from its own file the first time.

Measured, in headless Chromium from the OS packages against `llamadoc review OUT --no-browser`:
- the queue's index: every result file read as JSON (a first start), then from the index a
  start leaves in OUT/.llamadoc (a restart: one stat per file), then asked again;
- start: the process started until it prints its address (Python, the web stack, the index);
- first document: from the navigation's start until the document's first page image has
  loaded (a performance mark the page sets), each run in a new browser context and on another
  document, so its page is drawn, not taken from the server's cache;
- approve and next: from the key `a` (a mark the page sets) until the next document's first
  page image has loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llamadoc.review.batch import Batch  # noqa: E402
from tests.review_helpers import make_batch  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]


def big_batch(root: Path, count: int) -> Path:
    made = make_batch(root / "five")
    out = root / "out"
    out.mkdir()
    docs = root / "docs"
    docs.mkdir()
    templates = [json.loads(p.read_text()) for p in sorted(made.out.glob("*.json"))]
    for n in range(count):
        body = dict(templates[n % len(templates)])
        source = docs / f"invoice-{n:05d}.pdf"
        shutil.copyfile(body["source"], source)
        body["source"] = str(source)
        body["duplicates"] = []  # the copies name documents of the five-document batch
        (out / f"invoice-{n:05d}.json").write_text(json.dumps(body, ensure_ascii=False, indent=2))
    return out


def _mark(page: Any, name: str, count: int) -> float:
    """The start time (ms since the page's navigation) of the ``count``-th mark ``name``."""
    deadline = time.monotonic() + 60
    while True:
        marks = page.evaluate(f"() => performance.getEntriesByName({json.dumps(name)}).map(m => m.startTime)")
        if len(marks) >= count:
            return float(marks[count - 1])
        if time.monotonic() > deadline:
            raise SystemExit(f"no mark {name} #{count} within 60 s")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        out = big_batch(Path(tmp), args.documents)
        size = sum(p.stat().st_size for p in out.glob("*.json"))
        started = time.perf_counter()
        Batch(out).refresh()  # no index yet: every result file is read
        index_s = time.perf_counter() - started
        started = time.perf_counter()
        batch = Batch(out)
        batch.refresh()  # a restart: the index the first left in OUT/.llamadoc, each file's stat checked
        restart_s = time.perf_counter() - started
        started = time.perf_counter()
        batch.refresh()
        again_s = time.perf_counter() - started

        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "llamadoc", "review", str(out), "--no-browser"],
                                   cwd=tmp, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert process.stderr is not None
        url = None
        while url is None:
            line = process.stderr.readline().decode()
            if not line:
                raise SystemExit("llamadoc review did not start")
            found = re.search(r"at (http://\S+/)", line)
            url = found.group(1) if found else None
        start_s = time.perf_counter() - started
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                ids = [i.id for i in batch.refresh()]
                first: list[float] = []
                for run in range(args.runs):
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = context.new_page()
                    target = "" if run == 0 else f"#{ids[run * 7]}"  # run 0: the queue's first
                    page.goto(url + target)
                    # The page marks the moment the document's first page image has loaded: the
                    # time from the navigation's start (performance's origin) to it.
                    first.append(_mark(page, "llamadoc:shown", 1) / 1000)
                    expect(page.locator("#fields input").first).to_be_visible()
                    context.close()
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.goto(url)
                _mark(page, "llamadoc:shown", 1)
                steps: list[float] = []
                for n in range(20):
                    time.sleep(0.3)  # as a person would: the next document's prefetch has begun
                    page.keyboard.press("a")
                    shown = _mark(page, "llamadoc:shown", n + 2)
                    steps.append((shown - _mark(page, "llamadoc:decide", n + 1)) / 1000)
                browser.close()
        finally:
            process.terminate()
            process.wait(20)
    print(f"batch: {args.documents} result files, {size / 1e6:.0f} MB")
    print(f"queue index, in-process: every file read {index_s:.2f} s; from the index a run left "
          f"{restart_s:.2f} s; asked again, nothing changed {again_s * 1000:.0f} ms")
    print(f"llamadoc review (with the index) started to its address: {start_s:.2f} s")
    print("first document shown (s): " + ", ".join(f"{s:.3f}" for s in first)
          + f"; median {statistics.median(first):.3f}")
    print(f"approve and next shown (s), 20 steps: median {statistics.median(steps):.3f}, max {max(steps):.3f}")


if __name__ == "__main__":
    main()
