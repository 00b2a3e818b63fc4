"""How OpenMP's wait policy changes a page on the CPU with several threads: warm workers and one-off
processes, side by side in one run.

The engine sets GOMP_SPINCOUNT=10000 when neither it nor OMP_WAIT_POLICY is set (mllama/ggml.py);
"libgomp default" sets libgomp's own default (300,000 spins, about 3 ms) explicitly.

ggml's CPU backend (as llama-cpp-python builds it) runs each graph node on an OpenMP team and
waits at a barrier after every node. libgomp's threads spin about 3 ms (OMP_WAIT_POLICY unset)
before they sleep: between two graphs (Python's sampling, inputs) and whenever another process
holds a core, the spinning thread burns the core the other thread needs. Each contender is the
engine in its own process with one environment; a round encodes a fresh page, prefills a prompt
on it and decodes, in every contender in turn. "one-off" contenders start a new process per round
(load, then the same work), as a single ``llamadoc ask`` does; warm ones are loaded once.

    python -m benchmarks.mllama_threads --preset cpu-page --threads 2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
# The environments compared: name -> variables set for the worker (before ggml is loaded).
POLICIES: dict[str, dict[str, str]] = {
    "libgomp default (spin ~3 ms)": {"GOMP_SPINCOUNT": "300000"},  # what libgomp does with neither variable set
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=100000": {"GOMP_SPINCOUNT": "100000"},
    "the engine's default": {},  # whatever this checkout sets when the variables are unset
}


def _work(path: str, threads: int, seed: int, prompt: int, tokens: int, model: Any = None) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from llamadoc.engines.mllama.model import MllamaModel

    t0 = time.perf_counter()
    if model is None:
        model = MllamaModel.load(path, threads=threads, n_ctx=prompt + tokens + 64)
    loaded = time.perf_counter()
    side = 2 * model.config.vision.image_size
    page = Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8))
    ids = [128000, model.tokenizer.image] + [1000 + i % 5000 for i in range(prompt - 2)]
    c = time.process_time()
    out = model.generate(page, ids, max_tokens=tokens + 1, stop=())
    t = out.timings_ms
    return {"load_s": loaded - t0, "encode_s": t["vision"] / 1e3, "prefill_s": t["prefill"] / 1e3,
            "decode_s": t["decode"] / 1e3, "cpu_s": time.process_time() - c, "model": model}


def worker(path: str, threads: int, prompt: int, tokens: int, oneoff: bool) -> None:
    if oneoff:  # one line in, one line out, then exit: a fresh process per round
        seed = int(sys.stdin.readline())
        r = _work(path, threads, seed, prompt, tokens)
        r.pop("model")
        print(json.dumps(r), flush=True)
        return
    r = _work(path, threads, 999, prompt, tokens)  # warm-up: load, page the weights in, size buffers
    model = r.pop("model")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        r = _work(path, threads, int(line), prompt, tokens, model)
        r.pop("model")
        print(json.dumps(r), flush=True)


class Contender:
    def __init__(self, label: str, env: dict[str, str], cmd: list[str], oneoff: bool, log: Path) -> None:
        self.label, self.env, self.cmd, self.oneoff, self.log = label, env, cmd, oneoff, log
        self.rounds: list[dict[str, float]] = []
        self.proc: subprocess.Popen[str] | None = None if oneoff else self._start()
        if self.proc is not None:
            self._read(self.proc)

    def _start(self) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        env.update({"PYTHONPATH": str(REPO), "GGML_NO_BACKTRACE": "1", **self.env})
        err = open(self.log, "a")  # noqa: SIM115 - the worker's lifetime
        return subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                cwd=REPO, env=env)

    def _read(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker died (exit {proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def run(self, seed: int) -> None:
        proc = self._start() if self.oneoff else self.proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.write(f"{seed}\n")
        proc.stdin.flush()
        self.rounds.append(self._read(proc))
        if self.oneoff:
            proc.stdin.close()
            proc.wait()

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-page")
    ap.add_argument("--quant", default="Q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=700)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated names from POLICIES")
    ap.add_argument("--no-oneoff", action="store_true", help="warm workers only")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.file, args.threads, args.prompt, args.tokens, args.worker == "oneoff")
        return

    from benchmarks.mllama_synth import PRESETS, write_mllama

    path = args.dir / f"mllama-{args.preset}-{args.quant}.gguf"
    if not path.exists():
        args.dir.mkdir(parents=True, exist_ok=True)
        write_mllama(path, PRESETS[args.preset], quant=args.quant)
    contenders = []
    for i, name in enumerate(args.policies.split(",")):
        for oneoff in (False,) if args.no_oneoff else (False, True):
            cmd = [sys.executable, str(HERE), "--worker", "oneoff" if oneoff else "warm", "--file", str(path),
                   "--threads", str(args.threads), "--prompt", str(args.prompt), "--tokens", str(args.tokens)]
            label = f"{'one-off' if oneoff else 'warm'}, {name}"
            contenders.append(Contender(label, POLICIES[name], cmd, oneoff, args.dir / f"threads-{i}.log"))
    for r in range(args.rounds):
        for c in contenders:
            c.run(1000 + r)
    for c in contenders:
        c.close()

    print(f"command: python -m benchmarks.mllama_threads --preset {args.preset} --quant {args.quant} "
          f"--threads {args.threads} --rounds {args.rounds} --prompt {args.prompt} --tokens {args.tokens}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f} at the end")
    ref = contenders[0]
    print(f"{'median of ' + str(args.rounds) + ' rounds, wall s':<48}{'encode':>8}{'prefill':>8}{'decode':>8}"
          f"{'total':>8}{'vs first':>9}{'cpu s':>8}")
    for c in contenders:
        def med(key: str, c: Contender = c) -> float:
            return statistics.median(r[key] for r in c.rounds)

        total = [r["encode_s"] + r["prefill_s"] + r["decode_s"] for r in c.rounds]
        base = [r["encode_s"] + r["prefill_s"] + r["decode_s"] for r in ref.rounds]
        ratio = statistics.median(a / b for a, b in zip(total, base, strict=True))
        print(f"{c.label:<48}{med('encode_s'):>8.1f}{med('prefill_s'):>8.1f}{med('decode_s'):>8.2f}"
              f"{statistics.median(total):>8.1f}{ratio:>9.2f}{med('cpu_s'):>8.1f}")
    for c in contenders:
        print(f"  {c.label}: encode {[round(r['encode_s'], 1) for r in c.rounds]} s, "
              f"decode {[round(r['decode_s'], 2) for r in c.rounds]} s")


if __name__ == "__main__":
    main()
