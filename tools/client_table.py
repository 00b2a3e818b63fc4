"""The README's client table, measured: each real client's flow of tests/test_server_clients.py run
against a real `llamadoc serve` (tiny models, loopback), with what the server's access lines show
of each request (does it stream, does it send the image again, does it attach tools).

    python tools/client_table.py                 # both engines
    python tools/client_table.py --engine mllama
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamadoc.guard import GuardPolicy  # noqa: E402
from tests import test_server_clients as flows  # noqa: E402
from tests import tinymodels  # noqa: E402
from tests.conftest import make_image  # noqa: E402
from tests.mllama_helpers import convert_fixture, fixture_image  # noqa: E402
from tests.server_helpers import offline_home, serving  # noqa: E402

LISTING = re.compile(r"^(GET /api/tags|GET /v1/models\S*|POST /api/show) 200")
LINE = re.compile(r"^POST (\S+) (\d+) model=\S+ stream=(yes|no) images=(\d+) tools=(\d+)( schema)?")


def run(name: str, flow: Callable[[], Any], log: list[str]) -> dict[str, str]:
    start = len(log)
    try:
        flow()
        ok, error = True, ""
    except BaseException as err:  # noqa: BLE001 - a failed client is a row, not the end of the table
        ok, error = False, f"{type(err).__name__}: {str(err)[:120]}"
    time.sleep(0.5)  # an access line is written just after its response has gone
    chats = [m.groups() for m in map(LINE.match, log[start:]) if m]
    turns = [c for c in chats if c[1] == "200" and not c[5]]  # the conversation: not the schema call
    listed = sorted({m.group(1).split(" ")[1] for m in map(LISTING.match, log[start:]) if m})
    conversation = turns[:3]
    return {
        "client": name,
        "list": ", ".join(listed) if listed else "(none asked)",
        "1 turn": "yes" if ok and turns else "no",
        "3 turns": "yes" if ok and len(conversation) == 3 else "no",
        "image follow-up": "yes" if ok and len(conversation) == 3 and all(int(c[3]) > 0 for c in conversation)
        else "no",
        "stream": "yes" if ok and conversation and all(c[2] == "yes" for c in conversation) else "no",
        "schema": "yes" if ok and any(c[5] and c[1] == "200" for c in chats) else "no",
        "tools in the request": str(max((int(c[4]) for c in chats), default=0)),
        "routes": ", ".join(sorted({c[0] for c in chats})),
        "error": error,
    }


def cases(server: flows.Server, llm_home: Path, mp: pytest.MonkeyPatch) -> list[tuple[str, Callable[[], Any]]]:
    return [("ollama-python", partial(flows.test_ollama_python, server)),
            ("openai-python", partial(flows.test_openai_python, server)),
            ("llm + llm-ollama", partial(flows.test_llm_with_llm_ollama, server, llm_home)),
            ("langchain-ollama", partial(flows.test_langchain_ollama, server)),
            *[(f"LiteLLM {p}", partial(flows.test_litellm, server, p, mp))
              for p in ("ollama_chat/", "ollama/", "openai/")]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["mtmd", "mllama", "both"], default="both")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="llamadoc-clients-") as tmp_name:
        tmp = Path(tmp_name)
        for engine in (["mtmd", "mllama"] if a.engine == "both" else [a.engine]):
            if engine == "mtmd":
                image = make_image(tmp / "chart.png")
                options: dict[str, Any] = {"model": str(tinymodels.write_text_model(tmp / "tiny-chat.gguf")),
                                           "mmproj": str(tinymodels.write_mmproj(tmp / "mmproj.gguf", "mlp"))}
            else:
                image = tmp / "page.png"
                fixture_image("square").save(image)
                options = {"model": str(convert_fixture("tiny", tmp / "tiny-mllama.gguf", "Q8_0")), "ctx": 2048}
            log: list[str] = []
            with offline_home(tmp / f"home-{engine}"), serving(log, guard=GuardPolicy(mode="off"), max_tokens=96,
                                                                **options) as s:
                server = flows.Server(s, s.resident.name, image, log)  # the name it lists, not the path
                mp = pytest.MonkeyPatch()
                for name, flow in cases(server, tmp / f"llm-{engine}", mp):
                    rows.append({"engine": engine, **run(name, flow, log)})
                mp.undo()
    keys = ["engine", "client", "list", "1 turn", "3 turns", "image follow-up", "stream", "schema",
            "tools in the request", "routes"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")
    for r in rows:
        if r["error"]:
            print(f"\n{r['engine']} {r['client']}: {r['error']}")


if __name__ == "__main__":
    main()
