#!/usr/bin/env bash
# GPU check: the CUDA tests and the CUDA benchmark, from a checkout, with no install step.
#
#   bash scripts/gpu-check.sh                 # writes into ./gpu-out
#   OUT=/some/dir bash scripts/gpu-check.sh
#
# Needs a Python with CUDA torch, triton, pytest and hypothesis (kornia optional: its benchmark
# row is skipped without it); lovasz itself comes from src/ through PYTHONPATH.  Writes five files under
# $OUT: env.txt (nvidia-smi, versions, the summary), tests.txt, bench.txt (the benchmark's output),
# bench_cuda.md and bench_cuda.json (the benchmark's table and measurements).  The whole run stays under
# GPU_CHECK_SECONDS (default 450): tests get at most 300 s, the benchmark what is left, at most 240 s.
# Exits non-zero if the tests or the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TOTAL="${GPU_CHECK_SECONDS:-450}"

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
  echo "cpus: $(nproc 2>/dev/null || echo '?')"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi failed"
  echo
  "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ("triton", "numpy", "pytest", "hypothesis", "torchmetrics", "kornia"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "not available:", type(exc).__name__, exc)
import lovasz
print("lovasz", lovasz.__version__, lovasz.__file__)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== tests ($(date -u +%T))"
timeout -k 10 300 "$PY" -m pytest -q -p no:cacheprovider --durations=10 \
  tests/test_cuda.py tests/test_binned.py tests/test_backends.py 2>&1 | tee "$OUT/tests.txt"
tests_rc=${PIPESTATUS[0]}

left=$((TOTAL - SECONDS))
bench_limit=$((left < 240 ? left : 240))
if [ "$bench_limit" -lt 30 ]; then
  echo "== benchmark skipped: ${left}s left of ${TOTAL}s" | tee "$OUT/bench.txt"
  bench_rc=3
else
  # Sizes not started within the budget are skipped, leaving time to write the results.
  echo "== benchmark ($(date -u +%T), limit ${bench_limit}s)"
  budget=$((bench_limit > 90 ? bench_limit - 60 : bench_limit / 2))
  timeout -k 10 "$bench_limit" "$PY" benchmarks/bench_cuda.py --out "$OUT" --budget "$budget" 2>&1 \
    | tee "$OUT/bench.txt"
  bench_rc=${PIPESTATUS[0]}
fi

summary="gpu-check: tests exit $tests_rc, benchmark exit $bench_rc, ${SECONDS}s (124: timed out)"
echo "$summary" | tee -a "$OUT/env.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
