"""benchmarks/gpu_check.py (issue 24): the dry run takes every stage on the CPU and prints the
issue's table; a stage that fails or runs out of time costs only its own rows. No timing is
asserted: only that each figure was measured and lands in its row."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check
from benchmarks.gpu_check import GIB, Check, Outcome, parse_table

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_measures_every_row_of_the_table(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--work", str(work), "--out", str(out),
         "--wheels", str(tmp_path / "no-wheels"), "--pages", "3", "--in-flight", "2", "--extract-tokens", "4",
         "--fixed-batch", "2", "--big-tokens", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout[r.stdout.index("DRY RUN"):]
    rows = parse_table(table)
    assert [row["measure"] for row in rows[:4]] == [measure for _, measure, _ in gpu_check.ROWS]
    assert {row["verdict"] for row in rows} == {"dry run"}
    measured = rows[:6]  # the four targets and the two vision variants the engine has switches for
    assert not [row for row in measured if "not measured" in row["result"]], table
    assert rows[0]["result"].endswith("flash attention on)")
    assert "without flash attention" in rows[4]["measure"] and "flash attention off" in rows[4]["result"]
    assert "F16 vision weights" in rows[5]["measure"]
    assert "nothing installed" in table  # llama_cpp imports here: the install step installs nothing
    assert (out / "gpu_check_table.md").read_text().strip() == table.strip()
    # The 90B's and the F16 variant's files are removed once timed; the 11B's stay for a rerun.
    assert sorted(p.name for p in work.iterdir()) == ["llama-tiny-text.gguf", "mllama-tiny.gguf"]


def _check(tmp_path: Path) -> Check:
    args = argparse.Namespace(dry_run=False, budget=60.0, out=tmp_path / "out", work=tmp_path / "work", threads=16,
                              variants={"flash", "f16"})
    c = Check(args)
    c.stages = {
        "install": Outcome("ok", 9.0, "installed"),
        "devices": Outcome("ok", 2.0, data={"llama_cpp": "0.3.36", "devices": [
            {"kind": "GPU", "description": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GIB}]}),
        "baseline": Outcome("ok", 5.0, data={"prefill_tok_s": 12105.0, "decode_tok_s": 236.5}),
    }
    return c


def test_a_stage_that_dies_costs_only_its_own_rows(tmp_path: Path) -> None:
    c = _check(tmp_path)
    c.stages["engine"] = Outcome(
        "failed", 30.0, "killed by SIGABRT in step 'extraction': CUDA error: an illegal memory access",
        {"step": "extraction", "vision_ms": [639.0, 368.5, 370.0, 360.1], "vision_ms_per_page": 368.5,
         "flash": True, "prefill_tok_s": 4296.0, "decode_tok_s": 197.4})
    c.stages["big"] = Outcome("skipped", note="NVIDIA H100 80GB HBM3 has 79 GiB free of 80")
    rows = parse_table(gpu_check.render(c))
    vision, extract, decode, big = rows[:4]
    assert vision["result"].startswith("368.5 ms") and vision["verdict"] == "missed"
    assert extract["result"].startswith("not measured: engine failed (killed by SIGABRT")
    assert extract["verdict"] == "-"
    assert decode["result"].startswith("0.83x (197.4 / 236.5 tok/s") and decode["verdict"] == "missed"
    assert big["result"] == "not measured: 90B skipped (NVIDIA H100 80GB HBM3 has 79 GiB free of 80)"
    assert rows[4]["result"] == "not measured: the noflash stage did not run (see the stages below)"


def test_targets_met_read_as_met(tmp_path: Path) -> None:
    c = _check(tmp_path)
    c.stages["engine"] = Outcome("ok", 40.0, data={
        "vision_ms": [120.0, 95.0, 96.0, 94.0], "vision_ms_per_page": 95.0, "flash": True, "prefill_tok_s": 9000.0,
        "decode_tok_s": 220.0, "extract": {"pages": 32, "tokens_per_page": 300, "seconds": 14.0, "pages_s": 2.29,
                                           "vision_s": 3.0}})
    c.stages["big"] = Outcome("ok", 150.0, data={
        "device": "CUDA0 (NVIDIA H200)", "bytes": 53.9e9, "write_s": 40.0, "load_s": 30.0,
        "vision_ms_per_page": 120.0, "answer_tokens": 128, "decode_tok_s": 40.0, "prompt_tokens": 156,
        "prefill_tok_s": 900.0})
    assert [row["verdict"] for row in parse_table(gpu_check.render(c))[:4]] == ["met"] * 4
