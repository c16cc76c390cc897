#!/usr/bin/env bash
# Prepare, on this machine, what scripts/gpu-check.sh needs on the GPU machine and cannot get there.
#
#   bash scripts/gpu-wheels.sh        # -> gpu-wheels/ (gitignored; the device tool's `carry`)
#
# The GPU machine (../shared/DESIGN.md section 8) has Python 3.12 with torch (CUDA), numpy, pyarrow,
# scikit-learn, matplotlib, tqdm, packaging, psutil, ninja, py-cpuinfo, msgpack, einops, setuptools,
# but no package registry and none of deepspeed, pydantic or hjson. So this builds or downloads:
#   - deepspeed, as a wheel built here from its sdist with no ops compiled (DS_BUILD_OPS=0): pure
#     Python, so it installs on 3.12; DeepSpeed JIT-compiles an op only when one is used, and pitdist
#     uses none on one GPU (torch's AdamW, no fused Adam; nccl needs no comm op);
#   - its dependencies the GPU machine lacks: pydantic, pydantic-core (compiled: the cp312 manylinux
#     wheel), annotated-types, typing-inspection, typing-extensions (pydantic needs a recent one), hjson;
#   - Fashion-MNIST's four gz idx files (30 MB; converted to pitdist's Arrow format there, where the
#     uncompressed 55 MB would not fit the 64 MiB that travels).
# Versions are those installed in .venv, so the GPU machine runs what the tests here run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PITDIST_PYTHON:-.venv/bin/python}
OUT=gpu-wheels
FMNIST=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
# Everything that travels (tracked files, untracked ones, carried paths) must stay under 64 MiB.
LIMIT_MIB=48

if [ ! -x "$PY" ]; then
    echo "gpu-wheels.sh: $PY not found; run scripts/setup.sh first (or set PITDIST_PYTHON)" >&2
    exit 1
fi
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    if [ ! -f "$FMNIST/$f" ]; then
        echo "gpu-wheels.sh: $FMNIST/$f missing: install Fashion-MNIST with" \
            "\`apt-get install -y dataset-fashion-mnist\` (or set FASHION_MNIST_DIR)" >&2
        exit 1
    fi
done

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

tmp="$OUT.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/fashion-mnist"

# deepspeed's setup.py imports torch: build without isolation, in the venv that has torch.
echo "gpu-wheels.sh: building deepspeed==$(version deepspeed) (no ops)"
DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" \
    "deepspeed==$(version deepspeed)"

# The others as published wheels for CPython 3.12 on x86-64 Linux (pure-Python ones are py3-none-any).
pins=()
for name in pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson; do
    pins+=("$name==$(version "$name")")
done
echo "gpu-wheels.sh: downloading ${pins[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$tmp" "${pins[@]}"

cp "$FMNIST"/*-ubyte.gz "$tmp/fashion-mnist/"

# Every wheel must suit the GPU machine's Python 3.12 on x86-64.
for whl in "$tmp"/*.whl; do
    case "$(basename "$whl")" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-*manylinux*x86_64*.whl) ;;
        *)
            echo "gpu-wheels.sh: $(basename "$whl") will not install on CPython 3.12 x86-64" >&2
            exit 1
            ;;
    esac
done

rm -rf "$OUT"
mv "$tmp" "$OUT"
size_mib=$(du -sm "$OUT" | cut -f1)
ls -l "$OUT" "$OUT/fashion-mnist"
echo "gpu-wheels.sh: $OUT/ is ${size_mib} MiB"
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
    echo "gpu-wheels.sh: $OUT/ is over ${LIMIT_MIB} MiB: with the repository it may not fit the 64 MiB that travels" >&2
    exit 1
fi
echo "gpu-wheels.sh: now run scripts/gpu-check.sh on the GPU machine with $OUT carried (README: GPU check)"
