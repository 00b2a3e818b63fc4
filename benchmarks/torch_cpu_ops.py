"""What torch's CPU kernels give for the mllama vision encoder's operations at a page's shape, the
yardstick of benchmarks/mllama_vision_ops.py (ggml's): the MLP products and attention of one
layer, 6,432 tokens, width 1280, 16 heads of 80, in fp32 (transformers' dtype) and bf16.

CPU time of one thread, best of three. Needs torch (the transformers venv of benchmarks/README.md):

    VENV/bin/python -m benchmarks.torch_cpu_ops
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

T, E, FF, H, D = 6432, 1280, 5120, 16, 80


def best(fn: Callable[[], object], repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    print(f"command: VENV/bin/python -m benchmarks.torch_cpu_ops   (torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, 1 thread)")
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            x, h = torch.randn(T, E, dtype=dtype), torch.randn(T, FF, dtype=dtype)
            w1, w2 = torch.randn(FF, E, dtype=dtype) * 0.02, torch.randn(E, FF, dtype=dtype) * 0.02
            fc1 = 2 * T * E * FF / best(lambda x=x, w1=w1: F.linear(x, w1)) / 1e9
            fc2 = 2 * T * E * FF / best(lambda h=h, w2=w2: F.linear(h, w2)) / 1e9
            # a quarter of the queries against every key: one layer's attention is four of these
            q = torch.randn(1, H, T // 4, D, dtype=dtype)
            k, v = torch.randn(1, H, T, D, dtype=dtype), torch.randn(1, H, T, D, dtype=dtype)
            s = best(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), 2)
            print(f"{str(dtype).split('.')[1]:<9} GFLOP/s per thread: fc1 {fc1:.0f}, fc2 {fc2:.0f}, "
                  f"attention {4 * T * (T // 4) * D * H / s / 1e9:.0f} ({4 * s:.2f} s a layer)")


if __name__ == "__main__":
    main()
