"""A signal at any moment of `llamadoc serve`'s start: what the process does with it. A service
manager or a script may stop a server at any time, and the moment right after the "serving"
line is the likeliest (a test harness, a health check that gives up); each must end the server,
with its exit code (0 after SIGTERM, 130 after Ctrl-C) and no traceback.

    python benchmarks/stop_moments.py                             # the server from this checkout
    python benchmarks/stop_moments.py --checkout BEFORE_CHECKOUT  # the server from another one

Two kinds of rounds, --runs each: SIGTERM the moment "serving" is read, and SIGTERM at a random
moment --from..--to seconds after the process starts (through imports, the models' resolution
and uvicorn's start). Each round is its own `python -m llamadoc serve` on the tiny text model
and projector the tests generate (tests/tinymodels.py), `--guard off`; a process still alive
--hang-s after the signal is counted as hung and killed. Outcomes: the exit code, or "killed by
SIGINT" (what CPython does when it thinks a KeyboardInterrupt went unhandled), or "hung".
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests import tinymodels  # noqa: E402


def one(checkout: Path, models: dict[str, Path], home: Path, delay: float | None, hang_s: float) -> str:
    """One server, one SIGTERM: on the "serving" line (delay None) or ``delay`` s after the start."""
    env = {**os.environ, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "PYTHONPATH": str(checkout)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamadoc", "serve", "--model", str(models["model"]), "--mmproj",
         str(models["mmproj"]), "--guard", "off", "--port", "0", "--threads", "1"],
        env=env, stderr=subprocess.PIPE, text=True, cwd=str(checkout))
    assert proc.stderr is not None
    if delay is None:
        line = proc.stderr.readline()
        if "serving" not in line:
            proc.kill()
            proc.communicate()
            return f"no serving line: {line.strip()[:80]}"
    else:
        time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=hang_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return "hung"
    if "Traceback" in err:
        return f"exit {proc.returncode} with a traceback"
    if proc.returncode < 0:
        return f"killed by {signal.Signals(-proc.returncode).name}"
    return f"exit {proc.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, default=REPO, help="the llamadoc checkout the server runs from")
    ap.add_argument("--runs", type=int, default=30, help="rounds of each kind")
    ap.add_argument("--from", dest="start", type=float, default=0.1, help="earliest random moment, s")
    ap.add_argument("--to", dest="end", type=float, default=0.6, help="latest random moment, s")
    ap.add_argument("--hang-s", type=float, default=10.0, help="seconds after the signal that count as hung")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="llamadoc-stop-") as tmp_name:
        tmp = Path(tmp_name)
        models = {"model": tinymodels.write_text_model(tmp / "tiny-chat.gguf"),
                  "mmproj": tinymodels.write_mmproj(tmp / "mmproj.gguf", "mlp")}
        kinds = {"on the serving line": [None] * a.runs,
                 f"at random, {a.start:g}-{a.end:g} s after start": [rng.uniform(a.start, a.end)
                                                                    for _ in range(a.runs)]}
        print(f"checkout: {a.checkout.resolve()}; {a.runs} rounds each\n")
        print("| SIGTERM sent | outcomes |\n|---|---|")
        for kind, delays in kinds.items():
            seen = Counter(one(a.checkout.resolve(), models, tmp / "home", d, a.hang_s) for d in delays)
            print(f"| {kind} | " + ", ".join(f"{what}: {n}" for what, n in seen.most_common()) + " |", flush=True)


if __name__ == "__main__":
    main()
