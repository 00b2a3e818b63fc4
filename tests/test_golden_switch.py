"""The switch that rewrites golden files stays off wherever tests are meant to check them
(as docling's test_data_gen_flag.py): a run with it on compares nothing."""

from __future__ import annotations

from tests import golden


def test_the_switch_that_rewrites_golden_files_is_off() -> None:
    assert not golden.REGENERATE, f"{golden.SWITCH} is on: golden files were rewritten, not checked"
