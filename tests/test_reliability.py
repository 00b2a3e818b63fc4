"""The batch under faults, old caches and hostile arguments (issue 15), through the real CLI.

Signals and kills run the CLI as a subprocess; the loops over many delays are marked
slow, and a short version of each runs by default.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_image, make_pdf

MODEL_FLAGS = ("--max-tokens", "4", "--dpi", "30")


def folder(root: Path, count: int, name: str = "docs") -> Path:
    docs = root / name
    docs.mkdir()
    for i in range(count):  # every document different, so no answer can be another's
        make_pdf(docs / f"doc{i:02d}.pdf", [f"Invoice {i}", f"Total {i * 10}.00"])
    return docs


def outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and ".llamadoc" not in p.relative_to(out).parts)


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*.part")]


# -- 1. a file under -o is always the result of the run that last finished it ---------


@pytest.mark.parametrize("flag, values", [("-q", ["What is the total?", "Who is the seller?", "What is the total?"]),
                                          ("--max-tokens", ["4", "8", "4"])])
def test_a_result_file_follows_the_options_of_the_last_run(run_cli: Any, model_args: list[str], tmp_path: Path,
                                                           flag: str, values: list[str]) -> None:
    pdf = make_pdf(tmp_path / "oyo.pdf", ["Total 12.00", "Seller ACME"])
    out = tmp_path / "o"
    for value in values:
        args = {"-q": "What is the total?", "--max-tokens": "4"} | {flag: value}
        result = run_cli("ask", str(pdf), *model_args, "-q", args["-q"], "--max-tokens", args["--max-tokens"],
                         "--dpi", "30", "--format", "json", "-o", str(out))
        assert result.exit_code == 0, result.stderr
        recorded = json.loads((out / "oyo.json").read_text())["options"]
        assert (recorded["question"], str(recorded["max_tokens"])) == (args["-q"], args["--max-tokens"])
    before = (out / "oyo.json").stat().st_mtime_ns
    again = run_cli("ask", str(pdf), *model_args, "-q", args["-q"], "--max-tokens", args["--max-tokens"],
                    "--dpi", "30", "--format", "json", "-o", str(out))
    assert again.exit_code == 0 and "wrote" not in again.stderr
    assert (out / "oyo.json").stat().st_mtime_ns == before  # the same result again: left alone


@pytest.mark.parametrize("fmt, ext", [("text", ".txt"), ("md", ".md")])
def test_a_document_that_fails_takes_its_earlier_result_file_away(run_cli: Any, model_args: list[str],
                                                                  tmp_path: Path, fmt: str, ext: str) -> None:
    """Text and Markdown have nothing to say for a document that did not open, so no file: and
    none left from an earlier run either, or the folder would show a result this run did not get.
    The failure itself is in the summary (and in the JSON and JSONL formats' files)."""
    docs = folder(tmp_path, 2)
    out = tmp_path / "o"
    args = ["describe", str(docs), *model_args, *MODEL_FLAGS, "--format", fmt, "-o", str(out)]
    assert run_cli(*args).exit_code == 0
    assert [p.name for p in outputs(out)] == [f"doc00{ext}", f"doc01{ext}"]
    (docs / "doc00.pdf").write_bytes(b"%PDF-1.4 truncated")
    again = run_cli(*args)
    assert again.exit_code == 1
    assert "2 documents: ok 1, partial 0, failed 1" in again.stderr and "doc00.pdf is not a readable PDF" in again.stderr
    assert [p.name for p in outputs(out)] == [f"doc01{ext}"]  # the folder mirrors the last run


@pytest.mark.parametrize("fmt, ext", [("text", ".txt"), ("md", ".md")])
def test_an_answer_the_guard_withholds_takes_the_earlier_file_away(run_cli: Any, model_args: list[str],
                                                                   guard_model: Path, tmp_path: Path,
                                                                   fmt: str, ext: str) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["Invoice 7"])
    out = tmp_path / "o"
    args = ["ask", str(pdf), "-q", "What is it?", *model_args, *MODEL_FLAGS, "--format", fmt, "-o", str(out)]
    assert run_cli(*args).exit_code == 0 and (out / f"a{ext}").read_text().strip()
    strict = ["--guard", "block", "--guard-model", str(guard_model), "--guard-threshold", "0"]  # all unsafe
    blocked = run_cli(*args, *strict)
    assert blocked.exit_code == 3 and "withheld" in blocked.stderr
    assert outputs(out) == []  # the answer the guard now withholds is not left on disk


# -- 2. a cache entry of an unexpected shape is a miss --------------------------------


def _entries(store: Path) -> list[Path]:
    return [p for p in store.rglob("*.json") if "tmp" not in p.relative_to(store).parts]


def _reshape(entry: dict[str, Any], how: str) -> Any:
    page = entry["pages"][0]
    if how == "extra page field":
        page["from_the_future"] = 1
    elif how == "extra model field":
        entry["model"]["from_the_future"] = 1
    elif how == "extra verdict field":
        page["guard_in"] = [{"safe": True, "from_the_future": 1}]
    elif how == "page without status":
        del page["status"]
    elif how == "unknown status":
        page["status"] = "sideways"
    elif how == "empty":
        return {}
    elif how == "pages null":
        entry["pages"] = None
    elif how == "errors not a list":
        entry["errors"] = 5
    return entry


@pytest.mark.parametrize("how", ["extra page field", "extra model field", "extra verdict field",
                                 "page without status", "unknown status", "empty", "pages null",
                                 "errors not a list", "deeply nested", "not JSON"])
def test_a_result_entry_of_another_shape_is_a_miss_and_replaced(run_cli: Any, model_args: list[str],
                                                                tmp_path: Path, how: str) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", ["Invoice 7"])
    out = tmp_path / "out"
    args = ["ask", str(pdf), "-q", "?", *model_args, *MODEL_FLAGS, "--format", "json", "-o", str(out)]
    assert run_cli(*args).exit_code == 0
    [entry] = _entries(out / ".llamadoc" / "results")
    if how == "deeply nested":
        entry.write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError for json.loads
    elif how == "not JSON":
        entry.write_bytes(b"\xff\xfe{")
    else:
        entry.write_text(json.dumps(_reshape(json.loads(entry.read_text()), how)))
    again = run_cli(*args)
    assert again.exit_code == 0, again.stderr
    assert again.stderr.count("cache entries could not be read") == 1  # one line, no more
    doc = json.loads((out / "a.json").read_text())
    assert doc["status"] == "ok" and not doc["cached"]  # done again
    # A second, new document makes the third run print its summary, which counts the
    # results that came from the store: a.pdf's, read from the entry the second run replaced.
    other = make_pdf(tmp_path / "b.pdf", ["Invoice 8"])
    third = run_cli(*args, str(other))
    assert third.exit_code == 0, third.stderr
    assert "could not be read" not in third.stderr  # the entry was replaced ...
    assert "2 documents: ok 2" in third.stderr and "(1 from earlier runs)" in third.stderr  # ... and read
    assert json.loads(entry.read_text())["status"] == "ok"


@pytest.mark.parametrize("entry", [[], {}, {"text": 5}, {"text": "safe", "p_unsafe": "high"}, "[" * 50_000],
                         ids=["list", "empty", "text not a string", "score not a number", "deeply nested"])
def test_a_verdict_entry_of_another_shape_is_judged_again(run_cli: Any, model_args: list[str], guard_model: Path,
                                                          tmp_path: Path, isolated_home: Path, entry: Any) -> None:
    chart = make_image(tmp_path / "chart.png")
    args = ["ask", str(chart), "-q", "?", *[a for a in model_args if a not in ("--guard", "off")],
            "--guard-model", str(guard_model), "--guard", "flag", *MODEL_FLAGS, "--format", "json"]
    assert run_cli(*args).exit_code == 0
    verdicts = _entries(isolated_home / "cache" / "guard")
    assert verdicts
    for path in verdicts:
        path.write_text(entry if isinstance(entry, str) else json.dumps(entry))
    for extra in ((), ("--force",)):
        again = run_cli(*args, *extra)
        assert again.exit_code == 0, again.stderr
        doc = json.loads(again.stdout)
        assert doc["pages"][0]["guard_out"]["error"] is None
    assert all(set(json.loads(p.read_text())) == {"text", "p_unsafe"} for p in verdicts)  # replaced


# -- 3. Ctrl-C and SIGTERM always stop the run with exit 130 --------------------------


def _batch(tmp_path: Path, model_args: list[str], docs: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "llamadoc", "describe", str(docs), *model_args, "--max-tokens", "64",
           "--dpi", "30", "-o", str(tmp_path / "out"), "--format", "json", *extra]
    return cmd, os.environ | {"LLAMADOC_HOME": str(tmp_path / "home")}


def _wait_for_files(out: Path, count: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(list(out.glob("*.json"))) < count and proc.poll() is None:
        time.sleep(0.01)


def _interrupt(tmp_path: Path, model_args: list[str], docs: Path, signals: list[int], after: int) -> None:
    """Start a batch, signal it once ``after`` documents are written, and check what it left."""
    out = tmp_path / "out"
    cmd, env = _batch(tmp_path, model_args, docs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_files(out, after, proc)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.05)
        proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=60)  # within a page's time (pages take milliseconds here; CI is slow)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the run did not stop") from None
    total = len(list(docs.glob("*.pdf")))
    if proc.returncode == 0:  # the batch finished before the signal landed: nothing to interrupt
        assert len(outputs(out)) == total
        return
    if proc.returncode == -signals[0] and not outputs(out):
        return  # it landed while Python was starting, before llamadoc could handle it (a shell says 130)
    assert proc.returncode == 130, stderr
    assert "interrupted; finished documents are kept" in stderr and "Traceback" not in stderr
    assert "Exception ignored" not in stderr  # never swallowed inside a ctypes callback
    for p in outputs(out):
        assert json.loads(p.read_text())["status"] == "ok"  # what was written is whole
    assert not temp_files(out)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(outputs(out)) == total and not temp_files(out, tmp_path / "home")


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM]],
                         ids=["ctrl-c", "ctrl-c twice", "sigterm"])
def test_a_signal_stops_the_batch_with_exit_130(model_args: list[str], tmp_path: Path, signals: list[int]) -> None:
    _interrupt(tmp_path, model_args, folder(tmp_path, 24), signals, after=2)


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, 1, 3, 6, 10, 15])
@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM]],
                         ids=["ctrl-c", "ctrl-c twice", "sigterm"])
def test_signals_at_many_moments(model_args: list[str], tmp_path: Path, signals: list[int], after: int) -> None:
    _interrupt(tmp_path, model_args, folder(tmp_path, 24), signals, after=after)


def test_a_signal_inside_a_llama_cpp_log_callback_is_not_lost(text_model: Path) -> None:
    """Signals fired every few milliseconds while llama.cpp loads models (each load logs hundreds
    of lines through our callback): every one is raised, none is swallowed by ctypes."""
    code = f"""
import random, signal, sys, time
from llamadoc import interrupt
from llamadoc.engines import llamacpp
from llamadoc.engines.base import LoadOptions
interrupt.install()
sys.unraisablehook = sys.__unraisablehook__  # an exception swallowed anywhere is printed
fired = 0
def on_alarm(signum, frame):  # SIGINT's handler, on a timer's signal, counted
    global fired
    fired += 1
    interrupt._handler(signum, frame)
signal.signal(signal.SIGALRM, on_alarm)
options = LoadOptions(model_path={str(text_model)!r}, threads=1)
llamacpp.set_logging(False)
raised = deferred = 0
deadline = time.monotonic() + 20.0
while time.monotonic() < deadline and (deferred < 5 or raised < 20):
    try:  # one signal per round, from a one-shot timer: wherever it lands, it must come out here
        try:
            signal.setitimer(signal.ITIMER_REAL, random.uniform(0.0002, 0.01))
            llamacpp.load_llama(options, 256, 1).close()
            deferred += interrupt.requested() is not None  # it landed in a callback: kept for check()
            interrupt.check()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except KeyboardInterrupt:
        raised += 1
    interrupt._requested = None
signal.signal(signal.SIGALRM, signal.SIG_IGN)
print(fired, raised, deferred, flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(done.stdout.split()) == 3, (done.stdout, done.stderr[-2000:])
    fired, raised, deferred = (int(x) for x in done.stdout.split())
    assert raised == fired  # not one lost
    assert deferred > 0  # and some did land inside llama.cpp's callbacks
    assert "ctypes callback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_inside_exec_code_ends_with_the_chosen_exit_code(signum: int, tmp_path: Path) -> None:
    """CPython marks a KeyboardInterrupt that leaves exec()'d code (dataclasses build their
    methods so, while modules import) as unhandled even when caught, and `python -m` then dies
    by SIGINT instead of exiting with the code the run chose. The CLI's main() calls exiting()
    once the code is decided; so does this module, run as `python -m llamadoc` is."""
    code = r"""
import sys
from llamadoc import interrupt
interrupt.install()
print("ready", flush=True)
try:
    while True:
        exec("x = 0\nfor i in range(30000): x += i")
except KeyboardInterrupt:
    print("stopped", flush=True)
interrupt.exiting()  # as main() does on its way out
sys.exit(0)
"""
    (tmp_path / "looping.py").write_text(code)
    proc = subprocess.Popen([sys.executable, "-m", "looping"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    time.sleep(0.05)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "stopped\n"), err[-2000:]  # not -2: killed by SIGINT


# -- 4. no temporary file outlives a kill -9 ------------------------------------------


def _kill_during_batch(tmp_path: Path, model_args: list[str], docs: Path, after: int) -> None:
    out = tmp_path / "out"
    cmd, env = _batch(tmp_path, model_args, docs)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_files(out, after, proc)  # type: ignore[arg-type]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in outputs(out)}
    for p in outputs(out):
        json.loads(p.read_text())  # whole
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in outputs(out)] == sorted(f"{p.stem}.json" for p in docs.glob("*.pdf"))
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())  # written once
    assert not temp_files(out, tmp_path / "home")


def test_a_kill_leaves_no_temporary_file_a_later_run_keeps(model_args: list[str], tmp_path: Path) -> None:
    docs = folder(tmp_path, 12)
    out = tmp_path / "out"
    # What a kill -9 in the middle of a write leaves: a temporary file of a process now gone.
    code = ("import os, sys, tempfile; from llamadoc import files; tempfile.mkstemp("
            "prefix=f'.doc00.json.{files._HOST}-{os.getpid()}.', suffix='.part', dir=sys.argv[1])")
    for where in (out, out / ".llamadoc" / "results" / "tmp"):
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", code, str(where)], check=True)
    assert len(temp_files(out)) == 2
    _kill_during_batch(tmp_path, model_args, docs, after=3)


@pytest.mark.slow
@pytest.mark.parametrize("after", [0, 1, 2, 4, 7, 11])
def test_kills_at_many_moments(model_args: list[str], tmp_path: Path, after: int) -> None:
    _kill_during_batch(tmp_path, model_args, folder(tmp_path, 16), after)


# -- 5. shards do not depend on how the path is typed --------------------------------


def test_shards_agree_whatever_the_spelling_of_the_path(run_cli: Any, model_args: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = folder(tmp_path, 40, "in40")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    wrote: list[str] = []
    for shard, spelling in (("1/2", str(docs.absolute())), ("2/2", "in40")):
        result = run_cli("ask", spelling, "-q", "?", *model_args, "--max-tokens", "1", "--dpi", "20",
                         "--shard", shard, "-o", str(out), "--format", "json")
        assert result.exit_code == 0, result.stderr
        wrote += [line.split("wrote ")[1] for line in result.stderr.splitlines() if "wrote " in line]
    assert len(wrote) == 40 and len(set(wrote)) == 40  # every document once, none twice
    assert len(outputs(out)) == 40


# -- 6. stdin is bounded --------------------------------------------------------------


def test_stdin_past_its_limit_fails_that_document(model_args: list[str], tmp_path: Path) -> None:
    env = os.environ | {"LLAMADOC_HOME": str(tmp_path / "home"), "LLAMADOC_STDIN_LIMIT": str(4 << 20)}
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run([sys.executable, "-m", "llamadoc", "ask", "-", "-q", "x", *model_args], stdin=zero,
                              capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "<stdin> holds more than 4,194,304 bytes" in done.stderr and "LLAMADOC_STDIN_LIMIT" in done.stderr
    assert "Traceback" not in done.stderr


def test_stdin_within_its_limit_is_read(run_cli: Any, model_args: list[str], chart: Path) -> None:
    result = run_cli("ask", "-", "-q", "?", *model_args, *MODEL_FLAGS, "--format", "json", stdin=chart.read_bytes())
    assert result.exit_code == 0 and json.loads(result.stdout)["source"] == "<stdin>"


# -- 7. output errors are the user's (exit 2) or a document's, never a bug ------------


def test_an_unusable_output_folder_stops_before_any_model_loads(run_cli: Any, model_args: list[str], chart: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*_a: Any) -> None:
        raise AssertionError("the model must not load")

    monkeypatch.setattr("llamadoc.engines.load_vision_engine", no_model)
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    result = run_cli("ask", str(chart), "-q", "?", *model_args, "-o", str(a_file))
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"llamadoc: error: -o {a_file} is a file, not a folder (name a folder for the results)"]
    unwritable = Path("/proc/llamadoc-test-out")  # no one, not even root, makes folders there
    result = run_cli("ask", str(chart), "-q", "?", *model_args, "-o", str(unwritable))
    assert result.exit_code == 2 and f"-o {unwritable} cannot be written" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_write_that_fails_is_that_documents_failure(run_cli: Any, model_args: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    docs = folder(tmp_path, 3)
    out = tmp_path / "out"
    from llamadoc.outputs import writer as output

    real = output.write_atomic

    def disk_full_for_doc01(path: Path, text: str, tmp_dir: Path | None = None) -> None:
        if path.name == "doc01.json":
            raise OSError(28, "No space left on device")
        real(path, text, tmp_dir)

    monkeypatch.setattr(output, "write_atomic", disk_full_for_doc01)
    result = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert result.exit_code == 1
    assert f"cannot write {out / 'doc01.json'}: No space left on device" in result.stderr
    assert "1 result files could not be written" in result.stderr
    assert [p.name for p in outputs(out)] == ["doc00.json", "doc02.json"]  # the batch went on
    monkeypatch.setattr(output, "write_atomic", real)
    again = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert again.exit_code == 0 and f"wrote {out / 'doc01.json'}" in again.stderr  # from the store, this time


def test_a_file_too_large_for_the_disk_fails_alone(model_args: list[str], tmp_path: Path) -> None:
    """A real refusal by the OS: a file-size limit the large result exceeds."""
    docs = tmp_path / "docs"
    docs.mkdir()
    make_pdf(docs / "big.pdf", ["\n".join(f"line {i} of a long page of text" for i in range(40))] * 12)
    make_pdf(docs / "small.pdf", ["Total 3.00"])
    out = tmp_path / "out"

    def limit() -> None:  # Python ignores SIGXFSZ, so writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    done = subprocess.run([sys.executable, "-m", "llamadoc", "ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS,
                           "-o", str(out), "--format", "json"], capture_output=True, text=True, preexec_fn=limit,
                          env=os.environ | {"LLAMADOC_HOME": str(tmp_path / "home")}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"cannot write {out / 'big.json'}: File too large" in done.stderr
    assert "resuming is off" in done.stderr  # the store could not keep it either, and says so
    assert [p.name for p in outputs(out)] == ["small.json"] and not temp_files(out)


def test_a_name_that_is_also_a_folder_gets_its_own_file(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "a.json").mkdir(parents=True)
    make_pdf(docs / "a.pdf", ["A"])
    make_pdf(docs / "a.json" / "b.pdf", ["B"])
    out = tmp_path / "out"
    result = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    written = [p.relative_to(out).as_posix() for p in outputs(out)]
    assert "a.json/b.json" in written and len(written) == 2
    [a] = [p for p in written if p != "a.json/b.json"]
    assert json.loads((out / a).read_text())["source"] == str(docs / "a.pdf")


def test_an_unwritable_home_says_resuming_is_off(run_cli: Any, model_args: list[str], chart: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMADOC_HOME", "/proc/llamadoc-test-home")
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *MODEL_FLAGS, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert "cannot write the cache at /proc/llamadoc-test-home/cache/results" in result.stderr
    assert "resuming is off for this run" in result.stderr and json.loads(result.stdout)["status"] == "ok"


# -- 8. a file name that is not UTF-8 is a document like any other --------------------


def test_a_name_that_is_not_utf8_is_read_and_labelled(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    odd = os.fsdecode(b"inv\xff.pdf")
    os.rename(make_pdf(docs / "inv.pdf", ["Invoice"]), docs / odd)
    make_pdf(docs / "plain.pdf", ["Plain"])
    out = tmp_path / "out"
    result = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads((out / "inv\\xff.json").read_text())
    assert doc["source"] == f"{docs}/inv\\xff.pdf" and doc["status"] == "ok"
    assert (out / "plain.json").is_file()


# -- 9, 10. inputs get one clear line (options: test_exit_codes.USAGE_ERRORS) ---------


def test_a_pipe_is_read_like_stdin(run_cli: Any, model_args: list[str], chart: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(chart.read_bytes()))
    writer.start()
    result = run_cli("ask", str(fifo), "-q", "?", *model_args, *MODEL_FLAGS, "--format", "json")
    writer.join(timeout=10)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"] == str(fifo)


def test_misleading_messages_say_what_is_wrong(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    device = run_cli("ask", "/dev/zero", "-q", "?", *model_args)
    assert device.exit_code == 1 and "/dev/zero is a device, not a document file" in device.stderr
    schema_dir = run_cli("extract", str(tmp_path), "--schema", str(tmp_path), *model_args)
    assert schema_dir.exit_code == 2 and f"schema {tmp_path} is a folder, not a file" in schema_dir.stderr
    cut = tmp_path / "cut.png"
    cut.write_bytes(make_image(tmp_path / "whole.png").read_bytes()[:60])
    damaged = run_cli("ask", str(cut), "-q", "?", *model_args)
    assert damaged.exit_code == 1 and "is a damaged PNG image (image file is truncated)" in damaged.stderr
    assert "BytesIO" not in damaged.stderr and "0x" not in damaged.stderr


# -- 11. the hash cache is checked -----------------------------------------------------


def test_a_damaged_hash_cache_never_becomes_a_models_digest(run_cli: Any, model_args: list[str], chart: Path,
                                                            text_model: Path, isolated_home: Path) -> None:
    import hashlib

    stat = text_model.stat()
    cache = isolated_home / "cache"
    cache.mkdir(parents=True)
    (cache / "file-hashes.json").write_text(
        json.dumps({f"{text_model.resolve()}|{stat.st_size}|{stat.st_mtime_ns}": {"a": 1}}))
    result = run_cli("ask", str(chart), "-q", "?", *model_args, *MODEL_FLAGS, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["model"]["sha256"] == hashlib.sha256(text_model.read_bytes()).hexdigest()
    assert not list(cache.glob("*.tmp")) and not temp_files(cache)


# -- 12. output files have a plain file's mode ---------------------------------------


def test_result_files_follow_the_umask(model_args: list[str], chart: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "llamadoc", "ask", str(chart), "-q", "?", *model_args, *MODEL_FLAGS,
                           "-o", str(out), "--format", "json"], capture_output=True, text=True,
                          preexec_fn=lambda: os.umask(0o002),
                          env=os.environ | {"LLAMADOC_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert (out / "chart.json").stat().st_mode & 0o777 == 0o664


# -- 13. two runs on one -o share the work -------------------------------------------


def _runs(tmp_path: Path, model_args: list[str], docs: Path, count: int) -> Iterator[subprocess.Popen[str]]:
    cmd, env = _batch(tmp_path, model_args, docs)
    for _ in range(count):
        yield subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_two_runs_on_one_output_never_do_a_document_twice(model_args: list[str], tmp_path: Path) -> None:
    docs = folder(tmp_path, 16)
    runs = list(_runs(tmp_path, model_args, docs, 2))
    stderrs = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], stderrs
    wrote = [line.split("wrote ")[1] for err in stderrs for line in err.splitlines() if "wrote " in line]
    assert len(wrote) == 16 and len(set(wrote)) == 16  # each document written by one run, once
    assert len(outputs(tmp_path / "out")) == 16
    for err in stderrs:  # a document the other run held is said to be left to it, not counted as done
        left = [line for line in err.splitlines() if "left to another run" in line]
        assert len(left) <= 1


def test_a_document_another_run_holds_is_left_to_it(run_cli: Any, model_args: list[str], tmp_path: Path) -> None:
    import hashlib

    from llamadoc.outputs.writer import Claims

    docs = folder(tmp_path, 3)
    out = tmp_path / "out"
    held = hashlib.sha256((docs / "doc01.pdf").read_bytes()).hexdigest()
    with Claims(out / ".llamadoc" / "locks") as other_run:  # as another process working on doc01 would
        assert other_run.claim(held)
        result = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in outputs(out)] == ["doc00.json", "doc02.json"]
    assert "1 left to another run working on the same output" in result.stderr
    assert not list((out / ".llamadoc" / "locks").glob("*.lock"))  # released and removed by their holders
    again = run_cli("ask", str(docs), "-q", "?", *model_args, *MODEL_FLAGS, "-o", str(out), "--format", "json")
    assert again.exit_code == 0 and f"wrote {out / 'doc01.json'}" in again.stderr
