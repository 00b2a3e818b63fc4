"""How long reading a model's architecture takes: gguf.GGUFReader (what llamadoc used) vs the header reader.

    python benchmarks/gguf_header.py [--rounds 3]

The file has Llama 3's tokenizer shape (128,256 tokens, 280,147 merges) and no weights:
the header is what both readers parse, and its size is what a real 11B file's is.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from llamadoc.gguf_header import gguf_architecture, gguf_summary


def write_llama3_header(path: Path) -> Path:
    w = gguf.GGUFWriter(str(path), "mllama")
    w.add_context_length(131072)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i:06d}" for i in range(128_256)])
    w.add_token_types([1] * 128_256)
    w.add_token_merges([f"t{i} o{i}" for i in range(280_147)])
    w.add_chat_template("{{ messages }}")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def old_architecture(path: Path) -> str:
    """What registry/gguf_info.gguf_architecture did: a GGUFReader and every field decoded."""
    reader = gguf.GGUFReader(str(path))
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    return str(fields["general.architecture"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_llama3_header(Path(tmp) / "header.gguf")
        timings: dict[str, list[float]] = {"GGUFReader, architecture": [], "header reader, architecture": [],
                                           "header reader, whole summary": []}
        for _ in range(args.rounds):  # interleaved, so both see the same machine
            for name, fn in (("GGUFReader, architecture", lambda: old_architecture(path)),
                             ("header reader, architecture", lambda: gguf_architecture(path)),
                             ("header reader, whole summary", lambda: gguf_summary(path).architecture)):
                started = time.perf_counter()
                assert fn() == "mllama"
                timings[name].append((time.perf_counter() - started) * 1000)
        size = path.stat().st_size
    print(f"header of {size / 2**20:.1f} MiB; best of {args.rounds} interleaved rounds")
    print("| reader | ms |\n|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {min(values):.1f} |")


if __name__ == "__main__":
    main()
