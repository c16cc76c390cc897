#!/usr/bin/env bash
# Create the project-local virtual environment .venv and install pitdist into it.
#
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh --test   # plus what the test suite needs
#
# Why a script and not one `pip install`: deepspeed's setup.py imports torch, so torch must be
# installed first and deepspeed built with --no-build-isolation. Re-running is cheap: the install is
# skipped when pyproject.toml and constraints.txt have not changed since the last successful run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: pitdist needs Python >= 3.11; '$PYTHON' is $("$PYTHON" -V 2>&1). Set PYTHON=python3.11." >&2
  exit 1
fi

# Debian splits venv out of python3; install it when we are allowed to.
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing python3-venv (Debian)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
  else
    echo "setup.sh: '$PYTHON -m venv' is unavailable; install your distribution's python3-venv package." >&2
    exit 1
  fi
fi

# The metrics tests start a real Prometheus (Debian's package; the package's own service is not used).
if [ "$want_test" = 1 ] && ! { command -v prometheus && command -v promtool; } >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing prometheus (Debian) for the metrics tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "setup.sh: the metrics tests need prometheus and promtool; install Debian's prometheus package" >&2
  fi
fi

# The docker compose test runs Debian's Docker engine (started by the test with its own socket and data
# root, not as a service) and builds its base image with debootstrap: no image registry is needed.
if [ "$want_test" = 1 ] && ! { command -v dockerd && command -v debootstrap; } >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing docker.io and debootstrap (Debian) for the docker compose test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
  else
    echo "setup.sh: the docker compose test needs dockerd and debootstrap; install Debian's docker.io and debootstrap packages" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" -V)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

stamp=".venv/.pitdist-installed-$( (cat pyproject.toml constraints.txt; echo "test=$want_test") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing torch (first: deepspeed's build imports it)"
  "${PIP[@]}" install -q -c constraints.txt torch
  extras=""; [ "$want_test" = 1 ] && extras="[test]"
  say "installing pitdist$extras with deepspeed, ray, datasets, pyarrow (about a minute)"
  "${PIP[@]}" install -q --no-build-isolation -c constraints.txt -e ".$extras"
  rm -f .venv/.pitdist-installed-*
  touch "$stamp"
fi

# DeepSpeed JIT-compiles its shared-memory comm op at the first init_distributed (~30-45 s cold).
# Build it once here so the first training run does not stall silently, in this venv's own cache with
# this venv's ninja, as every pitdist process finds it (pitdist.distributed.comm.use_interpreter_tools).
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
if ! ls .venv/torch_extensions/*/deepspeed_shm_comm* >/dev/null 2>&1; then
  say "building DeepSpeed's CPU comm extension (once per venv, ~30 s)"
  TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions" PATH="$PWD/.venv/bin:$PATH" \
    .venv/bin/python -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' >/dev/null 2>&1 || true
fi
say "ready: $(.venv/bin/python -c 'import torch, deepspeed, ray; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}")')"
