#!/usr/bin/env bash
# The prepared device check of issue 11, run from the repository root:
#
#   bash kernels/gpu_check.sh            on a CUDA machine: the kernels compiled for sm_80/89/90,
#                                        kernel tests on CUDA (bf16 included),
#                                        kernels/gpu_check.py at the real 26B-A4B shapes (no host
#                                        syncs, CUDA graph, timings beside bandwidth floors), then
#                                        `dgemma bench --shapes 26b-a4b` (the engine's own path, BF16)
#   bash kernels/gpu_check.sh --dry-run  the compile check, then the same checks on the CPU at tiny
#                                        shapes under Triton's interpreter (CI); its times measure nothing
#
# Every output goes to $OUT (default: a new temporary folder), one file per part. The exit status
# is non-zero when any part failed; the parts after a failure still run.
set -uo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
fi
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
if [[ -x .venv/bin/python ]]; then
    python="${PYTHON:-.venv/bin/python}"
else
    python="${PYTHON:-python3}"
fi
# Run from a checkout without installing it (a device machine may have no package index).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=()

part() {  # part NAME TIMEOUT_S COMMAND...: run, keep its output in $OUT/NAME.txt, record failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    if [[ $rc -ne 0 ]]; then
        failed+=("$name")
    fi
}

echo "output: $OUT"
# Compiling needs no GPU: Triton's compiler and ptxas build the cubins for sm_80/89/90.
part compile 300 env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 "$python" -m kernels.gpu_check --compile-only
if [[ $dry_run -eq 1 ]]; then
    part kernels 300 env TRITON_INTERPRET=1 "$python" -m kernels.gpu_check --dry-run --out "$OUT"
else
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    part kernel-tests 300 "$python" -m pytest -q -p no:cacheprovider tests/kernels
    part kernels 300 "$python" -m kernels.gpu_check --out "$OUT"
    part bench-26b-a4b 420 "$python" -m engine.cli bench --shapes 26b-a4b --steps 16 --repeats 2
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all parts passed"
