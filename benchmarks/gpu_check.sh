#!/usr/bin/env bash
# One call on a GPU machine: build the extension in place, run the GPU tests (sources and
# stages), then the GPU benchmark, and print a table.  Output files go to $OUT when set.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "== build"
$PY setup.py build_ext --inplace -q 2>&1 | grep -E "error|warning:" || true
$PY -c "import pyfoundry as pf; print('cuda:', pf.cuda_available(), pf.gpu.cuda_error() or pf.gpu.cuda_init())"
echo "== tests"
$PY -m pytest -q -p no:cacheprovider tests/test_gpu_sources.py tests/test_gpu.py tests/test_gpu_model.py 2>&1 | tee "$OUTDIR/gpu_tests.log" | tail -40
echo "== benchmark"
$PY benchmarks/bench_gpu.py --formats f16,q8_0,q4_0,q4_1,q4_k,q6_k --models q4_k,q8_0 --json "$OUTDIR/bench_gpu.json"
