"""Text prefill and decode of the mllama engine beside llama-cpp-python and mistral.rs, in CPU time.

Each contender runs in its own process (its own interpreter or checkout), loaded once, on
--threads threads (default 1); rounds are interleaved (every contender prefills a --prompt-token
prompt and decodes --tokens steps per round). By default times are the CPU time of the process
around each call: on a shared machine whose other work takes most of the cores, wall times of one
thread varied 2-3x between rounds while CPU time varies a few per cent (a tok/s figure is then
tokens per CPU-second: what one core gives when nothing else runs). --clock wall reads wall time,
for several threads on a quiet machine (CPU time would count threads that spin while they wait).

    python -m benchmarks.mllama_text_peers --quant Q8_0 --python-mistralrs VENV/bin/python --base BASE
    python -m benchmarks.mllama_text_peers --quant Q8_0 --python-mistralrs VENV/bin/python --threads 2 --clock wall

Contenders: llama-cpp-python on a llama file of the same text shape (all 16 layers self-attention;
ggml's extra buffer types off with --no-extra-bufts); mistral.rs (``pip install mistralrs``, in
the interpreter --python-mistralrs names) on that same llama file with a tokenizer.json of its
vocabulary (its GGUF tokenizer loader rejects the synthetic file's merges); the engine of this
checkout (and of --base) on the mllama file, text only (13 layers: the reference skips
cross-attention layers without an image) and with a page image (16 layers, 3 of them over 6,404
image keys; the image is encoded once, before the rounds).
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
PROMPT_BASE = 1000  # prompt token ids: [bos] + 1000, 1001, ... (ordinary vocabulary entries)


def _prompt(n: int) -> list[int]:
    return [128000] + [PROMPT_BASE + i % 5000 for i in range(n - 1)]


CLOCK = time.process_time  # the worker's clock: CPU time of the process, or wall time (--clock wall)


def _cpu(fn: Any) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def _serve(prefill: Any, decode: Any, info: dict[str, Any]) -> None:
    """Lines "N M" in (prompt tokens, decode steps); one JSON line out per line."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        n, m = map(int, line.split())
        p = _cpu(lambda n=n: prefill(n))
        d = _cpu(lambda m=m: decode(m))
        print(json.dumps({"prefill_cpu_s": p, "decode_cpu_s": d}), flush=True)


def worker_llama(path: str, extra_bufts: bool, threads: int) -> None:
    from benchmarks import mllama_llamacpp as baseline

    llm = baseline.load(Path(path), threads, gpu=False, n_ctx=2048, extra_bufts=extra_bufts)
    llm.eval(_prompt(8))

    def prefill(n: int) -> None:
        llm.reset()
        llm.eval(_prompt(n))

    def decode(m: int) -> None:
        llm.reset()
        llm.eval(_prompt(8))
        baseline.greedy_decode(llm, m)

    # decode includes an 8-token prefill, as the other contenders' decode rounds do
    _serve(prefill, decode, {"extra_bufts": extra_bufts})


def worker_engine(path: str, image: bool, threads: int) -> None:
    import numpy as np
    from PIL import Image

    from llamadoc.engines.mllama.model import MllamaModel

    model = MllamaModel.load(path, threads=threads, n_ctx=2048)
    page = Image.fromarray((np.random.default_rng(0).random((900, 700, 3)) * 255).astype(np.uint8)) if image \
        else None

    def ids(n: int) -> list[int]:
        p = _prompt(n)
        return [p[0], model.tokenizer.image, *p[2:]] if image else p

    model.generate(page, ids(8), max_tokens=2, stop=())  # encodes and caches the page

    def prefill(n: int) -> None:
        model.generate(page, ids(n), max_tokens=1, stop=())

    def decode(m: int) -> None:
        model.generate(page, ids(8), max_tokens=m + 1, stop=())

    _serve(prefill, decode, {"image": image})


def worker_mistralrs(path: str, tokenizer: str) -> None:
    from mistralrs import CompletionRequest, Runner, Which  # type: ignore[import-not-found]

    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=os.path.dirname(path),
                                     quantized_filename=os.path.basename(path), tokenizer_json=tokenizer),
                    max_seqs=1, no_paged_attn=True)

    def text(n: int) -> str:  # the vocabulary has no merges: one character is one token
        return "".join(chr(97 + i % 26) for i in range(n))

    def run(n: int, m: int) -> Any:
        return runner.send_completion_request(CompletionRequest(model="m", prompt=text(n), max_tokens=m,
                                                                temperature=0.0))

    run(8, 2)
    counts: dict[str, int] = {}

    def prefill(n: int) -> None:
        counts["prompt"] = run(n, 1).usage.prompt_tokens

    def decode(m: int) -> None:
        counts["completion"] = run(8, m).usage.completion_tokens

    _serve(prefill, decode, {"tokens_per_prompt_char": 1})


def write_tokenizer(gguf_path: Path, out: Path) -> None:
    """A Hugging Face tokenizer.json with the GGUF's vocabulary (byte-level BPE, no merges)."""
    from llamadoc.engines.mllama.gguf_io import GGUFFile

    f = GGUFFile(gguf_path)
    try:
        tokens, types = f.get("tokenizer.ggml.tokens"), f.get("tokenizer.ggml.token_type")
    finally:
        f.close()
    assert isinstance(tokens, list) and isinstance(types, list)
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    out.write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}
                         for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == 3],
        "pre_tokenizer": level, "decoder": level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []}}))


class Contender:
    def __init__(self, label: str, cmd: list[str], pythonpath: Path, log: Path, threads: int) -> None:
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(pythonpath), "GGML_NO_BACKTRACE": "1",
               "RAYON_NUM_THREADS": str(threads)}
        with open(log, "w") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                         cwd=REPO, env=env)
        self.info = self._read()
        self.rounds: list[dict[str, float]] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"{self.label}: the worker died (exit {self.proc.wait()})")
            if line.startswith("{"):  # mistral.rs prints its own lines on stdout
                out: dict[str, Any] = json.loads(line)
                return out

    def run(self, n: int, m: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n} {m}\n")
        self.proc.stdin.flush()
        self.rounds.append(self._read())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="Q8_0", choices=("Q8_0", "Q4_K_M"))
    ap.add_argument("--prompt", type=int, default=700)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", type=Path, help="a checkout of the engine to compare with")
    ap.add_argument("--python-mistralrs", help="a Python with mistralrs: adds the mistral.rs contender")
    ap.add_argument("--no-extra-bufts", action="store_true", help="llama-cpp-python without AMX/repack buffers")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/llamadoc-bench"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="wall: wall time (for --threads above 1 on a quiet machine; CPU time counts spinning)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--file", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        global CLOCK
        CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
        f = args.file
        {"llama": lambda: worker_llama(f[0], f[1] == "1", args.threads),
         "engine": lambda: worker_engine(f[0], f[1] == "1", args.threads),
         "mistralrs": lambda: worker_mistralrs(f[0], f[1])}[args.worker]()
        return

    from benchmarks.mllama_synth import CPU_MID, write_llama, write_mllama

    args.dir.mkdir(parents=True, exist_ok=True)
    ml, ll = args.dir / f"mllama-cpu-mid-{args.quant}.gguf", args.dir / f"llama-cpu-mid-{args.quant}.gguf"
    tok = args.dir / "tokenizer-cpu-mid.json"
    if not ml.exists():
        write_mllama(ml, CPU_MID, quant=args.quant)
    if not ll.exists():
        write_llama(ll, CPU_MID, quant=args.quant)
    if args.python_mistralrs and not tok.exists():
        write_tokenizer(ll, tok)

    def worker(kind: str, *files: str, python: str = sys.executable) -> list[str]:
        return [python, str(HERE), "--worker", kind, "--threads", str(args.threads), "--clock", args.clock,
                "--file", *files]

    specs: list[tuple[str, list[str], Path]] = [
        ("llama-cpp-python, llama 16 layers", worker("llama", str(ll), "0" if args.no_extra_bufts else "1"), REPO)]
    if args.python_mistralrs:
        specs.append(("mistral.rs, llama 16 layers", worker("mistralrs", str(ll), str(tok),
                                                            python=args.python_mistralrs), REPO))
    for root, which in ((args.base.resolve(), "--base") if args.base else (None, ""), (REPO, "this checkout")):
        if root is None:
            continue
        specs.append((f"engine ({which}), text only", worker("engine", str(ml), "0"), root))
        specs.append((f"engine ({which}), with a page", worker("engine", str(ml), "1"), root))
    contenders = [Contender(label, cmd, root, args.dir / f"peers-{i}.log", args.threads)
                  for i, (label, cmd, root) in enumerate(specs)]
    for _ in range(args.rounds):
        for c in contenders:
            c.run(args.prompt, args.tokens)
    for c in contenders:
        c.close()

    import llama_cpp

    print(f"command: python -m benchmarks.mllama_text_peers --quant {args.quant} --prompt {args.prompt} "
          f"--tokens {args.tokens} --rounds {args.rounds}{' --base BASE' if args.base else ''}"
          f"{' --python-mistralrs VENV/bin/python' if args.python_mistralrs else ''}"
          f"{' --no-extra-bufts' if args.no_extra_bufts else ''} --threads {args.threads} --clock {args.clock}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s) each, llama-cpp-python "
          f"{llama_cpp.__version__}, {time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}")
    ref = contenders[0]

    def rate(c: Contender, key: str, n: int) -> list[float]:
        return [n / r[key] for r in c.rounds]

    unit = "tok per CPU-second" if args.clock == "cpu" else "tok/s"
    print(f"{'cpu-mid ' + args.quant + ', median of ' + str(args.rounds):<44}{'prefill':>9}{'vs llama':>9}"
          f"{'decode':>8}{'vs llama':>9}   {unit}")
    for c in contenders:
        cells = []
        for key, n in (("prefill_cpu_s", args.prompt), ("decode_cpu_s", args.tokens)):
            # decode rounds include an 8-token prompt: subtract it at this contender's own prefill rate
            own = [n / (r[key] - (8 * r["prefill_cpu_s"] / args.prompt if key == "decode_cpu_s" else 0))
                   for r in c.rounds]
            base = [n / (r[key] - (8 * r["prefill_cpu_s"] / args.prompt if key == "decode_cpu_s" else 0))
                    for r in ref.rounds]
            cells.append(f"{statistics.median(own):>9.1f}"
                         f"{statistics.median(a / b for a, b in zip(own, base, strict=True)):>9.2f}")
        print(f"{c.label:<44}{''.join(cells)}")
    for c in contenders:
        print(f"  {c.label}: prefill {[round(args.prompt / r['prefill_cpu_s'], 1) for r in c.rounds]}, "
              f"decode rounds s {[round(r['decode_cpu_s'], 2) for r in c.rounds]}")


if __name__ == "__main__":
    main()
