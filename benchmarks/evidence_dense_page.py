"""Finding one value on a dense page: a page of N words that each print the value ("1"), so
every word is a match (a statement of numbers, or a hostile PDF). Each tree (a checkout of
llamadoc) runs in its own process, alternated, so two versions are compared in one run:

    git worktree add /tmp/before <commit>
    python benchmarks/evidence_dense_page.py --tree /tmp/before --tree . --words 2000 4000 8000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from llamadoc.evidence.locate import Locator
from llamadoc.results import PageWords, Word
n = int(sys.argv[2])
words = tuple(Word("1", (i % 100) * 6.0, (i // 100) * 12.0, (i % 100) * 6.0 + 5, (i // 100) * 12.0 + 10, i // 100)
              for i in range(n))
locator = Locator({1: PageWords(1, 600.0, 1000.0, "text", words)})
started = time.perf_counter()
evidence, _ = locator.find(1, "number", ("total",))
print(json.dumps({"s": time.perf_counter() - started, "occurrences": evidence.occurrences}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="a llamadoc checkout (repeat to compare)")
    parser.add_argument("--words", type=int, nargs="+", default=[2000, 4000, 8000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for n in args.words:
            for tree in args.tree:
                out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tree).resolve()), str(n)],
                                     capture_output=True, text=True, check=True).stdout
                seconds = json.loads(out)["s"]
                best[(tree, n)] = min(best.get((tree, n), seconds), seconds)
    print("words  " + "  ".join(f"{tree:>14}" for tree in args.tree))
    for n in args.words:
        print(f"{n:>5}  " + "  ".join(f"{best[(tree, n)]:>12.2f} s" for tree in args.tree))


if __name__ == "__main__":
    main()
