"""How long a cached answer takes to come back: `llamadoc ask` on a page an earlier run answered.

    python benchmarks/cached_answer.py --base /path/to/a/checkout/of/the/old/commit [--rounds 3]

Both checkouts run the same command in the same home (each its own result store), rounds
interleaved: a vision model and a guard with Llama 3's vocabulary (128,256 tokens and
280,147 merges, as the real models have; tiny layers, so only the header is real-size),
the first run fills the store, then each round times one cached run of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import tinymodels  # noqa: E402
from tests.conftest import make_image  # noqa: E402

N_VOCAB = 128_256
N_MERGES = 280_147


def llama3_sized(path: Path, guard: bool) -> Path:
    """A tiny model whose tokenizer is Llama 3's size; the extra tokens and merges are control
    tokens that text never produces, so the model behaves as the tiny test model does."""
    base = tinymodels.LLAMA3_TOKENS if guard else tinymodels.CONTROL_TOKENS
    real_merges = (("s", "a"), ("sa", "f"), ("saf", "e"), ("u", "n"), ("un", "safe"), ("Ċ", "Ċ"))
    filler = [f"<|reserved_{i}|>" for i in range(N_VOCAB - len(base) - 256 - len(real_merges))]
    unused = tuple((filler[i % len(filler)], filler[(i * 7 + 1) % len(filler)])
                   for i in range(N_MERGES - len(real_merges)))
    return tinymodels.write_text_model(
        path, control=base + filler, merges=real_merges, unused_merges=unused, eos=4 if guard else 2,
        chat_template=tinymodels.GUARD_TEMPLATE if guard else tinymodels.CHATML_TEMPLATE,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        model, guard = llama3_sized(t / "vision.gguf", guard=False), llama3_sized(t / "guard.gguf", guard=True)
        mmproj = tinymodels.write_mmproj(t / "mmproj.gguf", "mlp")
        size = model.stat().st_size
        chart = make_image(t / "chart.png")
        cmd = [sys.executable, "-m", "llamadoc", "ask", str(chart), "-q", "Which bar is tallest?",
               "--model", str(model), "--mmproj", str(mmproj), "--guard-model", str(guard), "--guard", "flag",
               "--threads", "1", "--max-tokens", "8", "--format", "json"]
        checkouts = {"before (base)": args.base.resolve(), "now": ROOT}

        def run(checkout: Path) -> float:
            env = os.environ | {"PYTHONPATH": str(checkout), "LLAMADOC_HOME": str(t / "home"),
                                "LLAMADOC_OFFLINE": "1"}
            started = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{checkout}: exit {done.returncode}: {done.stderr[-500:]}")
            return elapsed

        first = {name: run(path) for name, path in checkouts.items()}  # fills each one's store
        cached: dict[str, list[float]] = {name: [] for name in checkouts}
        for _ in range(args.rounds):
            for name, path in checkouts.items():
                cached[name].append(run(path))
    print(f"models of {size / 2**20:.0f} MiB; median of {args.rounds} interleaved rounds")
    print("| checkout | first run s | cached run s |\n|---|---|---|")
    for name in checkouts:
        print(f"| {name} | {first[name]:.2f} | {statistics.median(cached[name]):.2f} |")
    ratio = statistics.median(cached["before (base)"]) / statistics.median(cached["now"])
    print(f"cached answer: {ratio:.1f}x faster now")


if __name__ == "__main__":
    main()
