"""A conversation's later turns against its first, and streaming's first chunk against its last,
through `llamadoc serve` and the ollama client, as a chat client sends them (the whole history
every turn, the image with the first question).

    python benchmarks/serve_turns.py --preset cpu-mid          # Llama 3.2 Vision's shape (mllama engine)
    python benchmarks/serve_turns.py --engine mtmd             # a mid-size random llama on libmtmd

Each turn's time is the client's (wall), with what the server says of it: prompt tokens, those
reused from the previous turn's cache (its access line), and the prefill+encode and decode times.
The "fresh server" row is the same second turn sent to a newly started server: the whole history
and the image evaluated again, which is what every turn cost before turns were kept.
"""

from __future__ import annotations

import argparse
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mllama_synth import PRESETS, write_mllama  # noqa: E402
from serve_speed import chart, cpu  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What does this chart show?", "Which bar is the tallest, and by how much?", "And the smallest one?"]
ACCESS = re.compile(r"POST /api/chat 200 .*tokens=(\d+)\+(\d+)(?: reused=(\d+))?")


class Server:
    """`llamadoc serve` in its own process; its stderr (the access lines) read as it comes."""

    def __init__(self, args: list[str], home: Path, threads: int) -> None:
        env = {**os.environ, "LLAMADOC_HOME": str(home), "LLAMADOC_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llamadoc", "serve", *args, "--guard", "off", "--port", "0", "--threads",
             str(threads), "--preload", "--keep-alive", "-1", "--ctx", "4096"],
            env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        found = re.search(r"at (http://\S+)", line)
        if not found:
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = found.group(1)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.strip())

    def chat_line(self, n: int) -> tuple[int, int, int]:
        """The n-th chat request's access line (written once its response has gone): prompt tokens,
        answer tokens, prompt tokens reused."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [m for m in map(ACCESS.search, self.lines) if m]
            if len(found) >= n:
                m = found[n - 1]
                return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
            time.sleep(0.05)
        raise SystemExit(f"no access line for chat request {n}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def turn(url: str, model: str, history: list[dict[str, Any]], tokens: int) -> tuple[float, Any]:
    import ollama

    started = time.perf_counter()
    r = ollama.Client(host=url, timeout=1800).chat(model=model, messages=history, options={"num_predict": tokens})
    return time.perf_counter() - started, r


def stream_times(url: str, model: str, history: list[dict[str, Any]], tokens: int) -> tuple[float, float, int]:
    """Seconds to the first chunk with text, to the last chunk, and the chunks with text."""
    import ollama

    started, first, n = time.perf_counter(), None, 0
    for part in ollama.Client(host=url, timeout=1800).chat(model=model, messages=history, stream=True,
                                                            options={"num_predict": tokens}):
        if part.message.content:
            n += 1
            first = first or time.perf_counter() - started
    return first or float("nan"), time.perf_counter() - started, n


def conversation(server: Server, model: str, image: Path, tokens: int) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    rows = []
    for i, q in enumerate(QUESTIONS):
        history.append({"role": "user", "content": q, **({"images": [str(image)]} if i == 0 else {})})
        wall, r = turn(server.url, model, history, tokens)
        prompt, answer, reused = server.chat_line(i + 1)
        rows.append({"turn": i + 1, "wall": wall, "prompt": prompt, "reused": reused,
                     "prefill": (r.prompt_eval_duration or 0) / 1e9, "decode": (r.eval_duration or 0) / 1e9,
                     "history": [*history]})
        history.append({"role": "assistant", "content": r.message.content})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["mllama", "mtmd"], default="mllama")
    ap.add_argument("--preset", default="cpu-mid", choices=sorted(PRESETS))
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--tokens", type=int, default=16, help="answer tokens per turn")
    ap.add_argument("--stream-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="of the streaming measure")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=1024, help="mtmd: the random llama's width")
    ap.add_argument("--layers", type=int, default=8, help="mtmd: its layers")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="llamadoc-turns-") as tmp_name:
        tmp = Path(tmp_name)
        image = chart(tmp / "chart.png", 7)
        if a.engine == "mllama":
            model = tmp / f"{a.preset}.gguf"
            write_mllama(model, PRESETS[a.preset], a.quant)
            args, label = ["--model", str(model)], f"mllama, preset {a.preset} ({a.quant})"
        else:
            from tests import tinymodels

            model = tinymodels.write_text_model(tmp / "mid.gguf", width=a.width, n_layer=a.layers)
            mmproj = tinymodels.write_mmproj(tmp / "mmproj.gguf", "mlp", text_width=a.width)
            args, label = ["--model", str(model), "--mmproj", str(mmproj)], \
                f"libmtmd, a random llama {a.layers} layers x {a.width} (F32)"
        print(f"# {date.today()}, {cpu()}, {label}, --threads {a.threads}, {a.tokens} answer tokens a turn\n",
              flush=True)
        server = Server(args, tmp / "home", a.threads)
        try:
            rows = conversation(server, str(model), image, a.tokens)
            # A new question after the third turn, each round: its history from the cache, its own tokens prefilled.
            streams = [stream_times(server.url, str(model), [*rows[-1]["history"], {"role": "user", "content":
                                    f"Describe bar {i + 1} in detail."}], a.stream_tokens) for i in range(a.rounds)]
        finally:
            server.stop()
        fresh = Server(args, tmp / "home-fresh", a.threads)
        try:
            wall, r = turn(fresh.url, str(model), rows[1]["history"], a.tokens)
            prompt, _answer, reused = fresh.chat_line(1)
            cold = {"wall": wall, "prompt": prompt, "reused": reused, "prefill": (r.prompt_eval_duration or 0) / 1e9,
                    "decode": (r.eval_duration or 0) / 1e9}
        finally:
            fresh.stop()
    print("| turn | prompt tokens | reused from the turn before | prefill + encode s | decode s | wall s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['turn']} | {row['prompt']} | {row['reused']} | {row['prefill']:.2f} | {row['decode']:.2f} | "
              f"{row['wall']:.2f} |")
    print(f"| 2, on a fresh server | {cold['prompt']} | {cold['reused']} | {cold['prefill']:.2f} | "
          f"{cold['decode']:.2f} | {cold['wall']:.2f} |")
    firsts, lasts = [s[0] for s in streams], [s[1] for s in streams]
    print(f"\nStreaming a {a.stream_tokens}-token answer to a new question after the third turn ({a.rounds} rounds, "
          "median): "
          f"first chunk {statistics.median(firsts):.2f} s, last chunk {statistics.median(lasts):.2f} s, "
          f"{statistics.median([s[2] for s in streams]):.0f} chunks with text")


if __name__ == "__main__":
    main()
