"""What a resident server saves: one-off `llamadoc ask` calls cold (a process each, loading the model
and encoding the page every time) against the same calls through `llamadoc serve`; five questions
about one chart (the server's image cache encodes the page once); and eight concurrent clients
against the same eight requests one after another (continuous batching).

    python benchmarks/serve_speed.py --preset tiny
    python benchmarks/serve_speed.py --preset cpu-mid

Synthetic mllama models with real shapes and random weights (mllama_synth.py): speed does not
depend on the weights' values. Cold and served calls alternate, so both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mllama_synth import PRESETS, write_mllama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Which bar is tallest?", "What is the title?", "How many bars are there?", "What is the unit?",
             "Which year is shown?"]


def chart(path: Path, seed: int) -> Path:
    """A page-sized picture with bars: 4 tiles on the mllama canvas."""
    rng = np.random.default_rng(seed)
    img = np.full((900, 1200, 3), 245, dtype=np.uint8)
    for i in range(8):
        h = int(rng.integers(100, 800))
        img[900 - h:, 100 + i * 130: 180 + i * 130] = rng.integers(0, 200, 3)
    Image.fromarray(img).save(path)
    return path


def cpu() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


class Server:
    """`llamadoc serve` in its own process, as a user runs it."""

    def __init__(self, model: Path, home: Path, threads: int, max_tokens: int) -> None:
        env = {**os.environ, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamadoc", "serve", "--model", str(model), "--guard", "off", "--port", "0",
             "--threads", str(threads), "--max-tokens", str(max_tokens), "--preload", "--keep-alive", "-1"],
            env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        found = re.search(r"at (http://\S+)", line)
        if not found:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = found.group(1)
        import ollama

        ollama.Client(host=self.url).chat(model=str(model), messages=[])  # wait for --preload to finish

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def ask(image: Path, question: str, model: Path, home: Path, threads: int, max_tokens: int,
        server: str | None = None) -> tuple[float, dict[str, Any]]:
    """One `llamadoc ask` process: its wall time and its result document."""
    args = [sys.executable, "-m", "llamadoc", "ask", str(image), "-q", question, "--guard", "off", "--force",
            "--max-tokens", str(max_tokens), "--format", "json"]
    args += ["--server", server] if server else ["--model", str(model), "--threads", str(threads)]
    env = {**os.environ, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"ask failed ({out.returncode}): {out.stderr}")
    return elapsed, json.loads(out.stdout)


def clients(url: str, model: Path, images: list[Path], max_tokens: int, together: bool) -> float:
    """Eight requests through the Ollama API: all at once, or one after another; their wall time."""
    import ollama

    def one(i: int) -> None:
        ollama.Client(host=url).chat(model=str(model), options={"num_predict": max_tokens},
                                     messages=[{"role": "user", "content": QUESTIONS[i % 5], "images": [images[i]]}])

    started = time.perf_counter()
    if together:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(len(images)):
            one(i)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the eight-client comparison")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamadoc-serve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / f"{a.preset}.gguf"
        write_mllama(model, PRESETS[a.preset], a.quant)
        images = [chart(tmp / f"chart{i}.png", i) for i in range(max(a.clients, 1))]
        server = Server(model, tmp / "home-server", a.threads, a.max_tokens)
        print(f"# {date.today()}, {cpu()}, preset {a.preset} ({a.quant}), --max-tokens {a.max_tokens}, "
              f"--threads {a.threads}\n", flush=True)
        try:
            cold, served = [], []
            for _ in range(a.calls):  # interleaved: cold, served, cold, served, ...
                cold.append(ask(images[0], QUESTIONS[0], model, tmp / "home-cold", a.threads, a.max_tokens)[0])
                served.append(ask(images[0], QUESTIONS[0], model, tmp / "home-client", a.threads, a.max_tokens,
                                  server.url)[0])
            print("| measure | cold (a process each) | through the server | ratio |\n|---|---|---|---|")
            print(f"| {a.calls} sequential `llamadoc ask`, total s | {sum(cold):.1f} | {sum(served):.1f} | "
                  f"{sum(cold) / sum(served):.2f}x |", flush=True)
            five_cold, five_served, encode_ms = 0.0, 0.0, []
            fresh = chart(tmp / "five.png", 99)  # not yet in the server's image cache
            for q in QUESTIONS:
                five_cold += ask(fresh, q, model, tmp / "home-cold", a.threads, a.max_tokens)[0]
                t, doc = ask(fresh, q, model, tmp / "home-client", a.threads, a.max_tokens, server.url)
                five_served += t
                encode_ms.append(doc["pages"][0]["timings_ms"].get("vision_encode", float("nan")))
            print(f"| 5 questions about one chart, total s | {five_cold:.1f} | {five_served:.1f} | "
                  f"{five_cold / five_served:.2f}x |")
            print(f"\nvision_encode ms on the server, question 1..5: {', '.join(f'{x:.1f}' for x in encode_ms)}\n",
                  flush=True)
            one_by_one, together = [], []
            for _ in range(a.rounds):
                one_by_one.append(clients(server.url, model, images, a.max_tokens, together=False))
                together.append(clients(server.url, model, images, a.max_tokens, together=True))
        finally:
            server.stop()
    seq_rate = a.clients / statistics.median(one_by_one)
    par_rate = a.clients / statistics.median(together)
    print(f"| {a.clients} requests (Ollama API) | pages/s |\n|---|---|")
    print(f"| one after another | {seq_rate:.2f} |\n| all at once (one decoding batch) | {par_rate:.2f} |")
    print(f"| ratio | {par_rate / seq_rate:.2f}x |")


if __name__ == "__main__":
    main()
