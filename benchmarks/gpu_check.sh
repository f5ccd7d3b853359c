#!/usr/bin/env bash
# The device check on a GPU machine that has no network (its image holds PyTorch, timm,
# scikit-learn, transformers, xxhash and pytest, but not Ray or open_clip).
#
#   bash benchmarks/gpu_check.sh --prepare      # where PyPI is reachable: fill the wheel cache
#   bash benchmarks/gpu_check.sh [OPTIONS]      # on the GPU machine: install from it, then run
#                                               # benchmarks/gpu_check.py --device cuda OPTIONS
#
# The cache holds wheels for Python 3.12 on manylinux x86-64 (the GPU image's Python), in two
# folders of at most 60 MiB each, so that each fits a transfer limit of 64 MiB: `.whl-a/` (the
# small wheels and the first part of Ray's) and `.whl-b/` (the rest of Ray's wheel). Bring both;
# a machine that keeps files between commands may receive them one command at a time. Without
# the cache the check still runs, without its Ray stage (gpu_check.py --skip-ray) and with the
# open_clip-free parts only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=(ray==2.60.0 click==8.3.1 jsonschema==4.25.1 jsonschema-specifications==2025.9.1
        referencing==0.37.0 rpds-py==0.30.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.14)

if [ "${1:-}" = "--prepare" ]; then
    rm -rf .whl-a .whl-b && mkdir -p .whl-a .whl-b /tmp/gpu-check-wheels
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d /tmp/gpu-check-wheels "${WHEELS[@]}"
    for whl in /tmp/gpu-check-wheels/*.whl; do
        if [ "$(stat -c %s "$whl")" -gt $((50 * 1024 * 1024)) ]; then
            split -b 50M -d "$whl" ".whl-a/$(basename "$whl").part-"
            mv .whl-a/"$(basename "$whl")".part-0[1-9] .whl-b/
        else
            cp "$whl" .whl-a/
        fi
    done
    du -sh .whl-a .whl-b
    exit 0
fi

SKIP_RAY=()
if compgen -G ".whl-a/*" >/dev/null; then
    mkdir -p /tmp/gpu-check-wheels
    cp .whl-a/*.whl /tmp/gpu-check-wheels/ 2>/dev/null || true
    for first in .whl-a/*.part-00; do
        [ -e "$first" ] || continue
        name="$(basename "${first%.part-00}")"
        cat "$first" .whl-b/"$name".part-* > "/tmp/gpu-check-wheels/$name"
    done
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site /tmp/gpu-check-wheels/*.whl
    export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "gpu_check.sh: no wheel cache (.whl-a/): the Ray stage is left out" >&2
    SKIP_RAY=(--skip-ray)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py --device cuda "${SKIP_RAY[@]}" "$@"
