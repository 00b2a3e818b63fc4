#!/usr/bin/env bash
# Issue 24's GPU check on the lent GPU machine: one call, one table (benchmarks/gpu_check.py).
#
# Before the call, in the repository root here (.gpu/ is git-ignored; it travels only as a carry):
#   mkdir -p .gpu && cp ../shared/gpu/wheels/*.whl .gpu/
# The device call: command "bash benchmarks/gpu_check.sh", carry [".gpu"], timeout_s 360.
# The script keeps to a 330 s budget (--budget), so the table prints before the call's limit, and
# a 15-minute lease (the machine's start included) keeps room for one rerun. The table is also in $OUT/gpu-check/ after every
# stage (gpu_check_table.md, gpu_check.json, each stage's log), so a killed call still returns it.
# Extra arguments go to the script, e.g. --big on (the 90B on an H100 too) or --variants f16.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_check --tests "$@"
