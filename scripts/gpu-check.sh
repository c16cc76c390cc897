#!/usr/bin/env bash
# ONE prepared check of pitdist on a single GPU, under 8 minutes, with no Ray and no package registry.
#
#   bash scripts/gpu-wheels.sh                  # here, once: wheels + Fashion-MNIST into gpu-wheels/
#   bash scripts/gpu-check.sh                   # there: the device tool's command, carry ["gpu-wheels"]
#   bash scripts/gpu-check.sh --cpu --out F     # anywhere: toy sizes on CPU (what the test suite runs)
#
# On the GPU machine (Python 3.12 with torch at /opt/torch/.venv; ../shared/DESIGN.md section 8) it
#   1. installs the carried wheels (deepspeed, pydantic, hjson, ...) with --no-index into a --target
#      directory put on PYTHONPATH, with pitdist itself from this checkout. No venv: one made from a
#      venv's python would see the base interpreter's site-packages, not the venv's torch;
#   2. converts the carried Fashion-MNIST idx files to pitdist's Arrow format (data/fmnist-{train,test});
#   3. runs `pitdist bench gpu-check` (pitdist/bench/gpu_check/) with what is left of the 8 minutes:
#      ring kernels, bf16 vs fp32, ledger cost, TFLOP/s / MFU / memory, accuracy. Its JSON goes to
#      $OUT/gpu-check.json when $OUT is set (the device tool brings $OUT back), else runs/; the log
#      to $OUT/gpu-check.log.
# --cpu skips 1 and 2 and uses this machine's interpreter (PITDIST_PYTHON, else .venv/bin/python, else
# python3). Other arguments go to `pitdist bench gpu-check` (see its --help).
# Settings: PITDIST_PYTHON (the interpreter), GPU_CHECK_TOTAL_S (seconds for everything, default 450),
# PITDIST_GPU_WHEELS (default gpu-wheels).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
total=${GPU_CHECK_TOTAL_S:-450}

cpu=0
for arg in "$@"; do
    if [ "$arg" = "--cpu" ]; then cpu=1; fi
done

export PYTHONUNBUFFERED=1
log=/dev/null
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    log="$OUT/gpu-check.log"
fi

if [ "$cpu" = 1 ]; then
    if [ -n "${PITDIST_PYTHON:-}" ]; then PY=$PITDIST_PYTHON
    elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
    else PY=python3
    fi
    export DS_ACCELERATOR=cpu PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    exec "$PY" -m pitdist.cli bench gpu-check "$@"
fi

PY=${PITDIST_PYTHON:-/opt/torch/.venv/bin/python}
WHEELS=${PITDIST_GPU_WHEELS:-gpu-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/pitdist-gpu-site}
if [ ! -x "$PY" ]; then
    echo "gpu-check.sh: no interpreter at $PY; set PITDIST_PYTHON to a Python with CUDA torch" >&2
    exit 1
fi
if ! ls "$WHEELS"/deepspeed-*.whl >/dev/null 2>&1 || [ ! -d "$WHEELS/fashion-mnist" ]; then
    echo "gpu-check.sh: $WHEELS/ lacks the wheels or the data: run \`bash scripts/gpu-wheels.sh\` on the" \
        "machine with the registry and carry $WHEELS (device tool: carry [\"$WHEELS\"])" >&2
    exit 1
fi

{
    echo "gpu-check.sh: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
    # 1. the wheels, offline, into a directory of their own (nothing of the interpreter's is changed)
    rm -rf "$SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c 'import deepspeed, pydantic, hjson, pitdist.cli; print("gpu-check.sh: deepspeed", deepspeed.__version__, "pydantic", pydantic.__version__)'
    # 2. the data
    for split in train test; do
        if [ ! -d "data/fmnist-$split" ]; then
            "$PY" -m pitdist.cli data convert fashion-mnist "$WHEELS/fashion-mnist" --split "$split" \
                --out "data/fmnist-$split" --no-progress
        fi
    done
    echo "gpu-check.sh: set-up took $((SECONDS - start)) s"
} 2>&1 | tee "$log"

# 3. the check, in what is left; `timeout` is the last resort (the JSON is rewritten after every section)
left=$((total - (SECONDS - start)))
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
set +e
timeout --kill-after=10 "$((left + 5))" "$PY" -m pitdist.cli bench gpu-check --budget-s "$((left - 5))" \
    --dataset data/fmnist-train --val-dataset data/fmnist-test "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
echo "gpu-check.sh: exit $status after $((SECONDS - start)) s"
exit "$status"
