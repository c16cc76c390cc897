#!/usr/bin/env bash
# Install everything the tests need, then run the whole test suite (extra args go to pytest).
#   bash scripts/test.sh                 # everything (what CI runs)
#   bash scripts/test.sh -m "not slow"   # the quick subset
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --test
export DS_ACCELERATOR=cpu
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: for us that is a failure, not a pass.
if [ "$status" = 5 ]; then echo "test.sh: no tests ran" >&2; exit 1; fi
exit "$status"
