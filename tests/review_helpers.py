"""A finished batch for the review page's tests, and `llamadoc review` running over it.

The batch is a real one: printed invoices (tests/printed.py) read by the pipeline with a
scripted engine that also says how sure it was of each character, written with -o, so each
value has the evidence, confidence and checks a model's batch gives it. Four documents, each
needing a look for its own reason, and one that needs none:

- wrong.pdf: a VAT ID and an IBAN whose check digits are wrong, and a doubtful invoice number;
- absent.pdf: a buyer the page does not print (no evidence);
- first.pdf and again.pdf: the same invoice saved twice (duplicates);
- clean.pdf: nothing to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamadoc.engines.base import GenerationRequest
from tests.printed import PrintedInvoice, resaved, wrong_ids
from tests.test_review import SureEngine, batch

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["wrong.pdf", "absent.pdf", "first.pdf", "again.pdf", "clean.pdf"]  # as the batch reads them
# The queue's: a failed check, then no evidence, then the duplicates (by name), then the rest.
QUEUE = ["wrong.pdf", "absent.pdf", "again.pdf", "first.pdf", "clean.pdf"]


@dataclass
class Made:
    out: Path
    docs: dict[str, Path]  # name -> the document's path
    wrong: PrintedInvoice


def make_batch(folder: Path) -> Made:
    folder.mkdir(parents=True, exist_ok=True)
    wrong = wrong_ids(PrintedInvoice(number="RE-2026-0900"))
    absent = PrintedInvoice(number="RE-2026-0901")
    twice = PrintedInvoice(number="RE-2026-0902")
    clean = PrintedInvoice(number="RE-2026-0903")
    docs = {"wrong.pdf": wrong.pdf(folder / "wrong.pdf"), "absent.pdf": absent.pdf(folder / "absent.pdf"),
            "first.pdf": twice.pdf(folder / "first.pdf")}
    docs["again.pdf"] = resaved(docs["first.pdf"], folder / "again.pdf")
    docs["clean.pdf"] = clean.pdf(folder / "clean.pdf")
    not_printed = json.loads(absent.answers()[0])
    not_printed["buyer"]["name"] = "Nirgendwo Handels GmbH"
    answers = [wrong.answers()[0], json.dumps(not_printed), twice.answers()[0], twice.answers()[0],
               clean.answers()[0]]  # in the order the batch reads the documents (ORDER)

    def answer(request: GenerationRequest, n: int) -> str:
        return answers[n - 1]

    engine = SureEngine(answer, doubt={"RE-2026-0900": 0.3})
    _, out = batch(folder, engine, [docs[name] for name in ORDER])
    return Made(out=out, docs=docs, wrong=wrong)


@dataclass
class Review:
    url: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def reviewing(out: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
              ) -> Iterator[Review]:
    """`llamadoc review OUT --no-browser` in a process of its own, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llamadoc", "review", str(out), "--no-browser", *args],
        cwd=cwd or out.parent, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert process.stderr is not None
    url, seen = None, []
    deadline = time.monotonic() + 60
    while url is None:
        line = process.stderr.readline().decode()
        seen.append(line)
        if not line and process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("llamadoc review did not start: " + "".join(seen))
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        url = found.group(1) if found else None
    try:
        yield Review(url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def queue_names(body: dict[str, Any]) -> list[str]:
    return [item["name"] for item in body["items"]]
