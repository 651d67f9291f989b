#!/usr/bin/env bash
# The test suite, then the machine given back as found: the bpffs mount that setup made (if it
# made one) is removed once no test left anything in it. Runs the clean-up on failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
cleanup() {
    .venv/bin/python -c 'from ciliary.datapath.linux.bpffs import unmount_if_setup_mounted as u; u()'
}
trap cleanup EXIT
# the slowest 30 in every log, to keep the suite within its 25-minute budget
.venv/bin/python -m pytest -q --durations=30 tests
