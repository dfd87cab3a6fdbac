#!/usr/bin/env bash
# The GPU run, prepared for a machine lent for a few minutes: `make bench-gpu`'s default run (eager vs CUDA
# graphs at 512 and 768, batch 1/4/8, first image per mode; a container's start; the embedded server's images/s
# with batching off and on), with each part under its own time limit and its figures written as they come.
#
#   bash scripts/bench/device_check.sh        # from the repository root, on the GPU machine
#
# Results go to $OUT when set (a directory the caller collects), else bench-results/. Wheels the machine lacks
# may be brought in .whl/ (installed into /tmp/site, no network needed). The whole run stays under 8 minutes.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
export BENCH_RESULTS_DIR="$OUT" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$PYTHON" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" 2>&1
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"
# The main table (writes gpu.json after every row), then the container start and the server (same JSON).
timeout 420 "$PYTHON" -m scripts.bench.gpu > "$OUT/gpu.log" 2>&1
echo "scripts.bench.gpu exit $?" | tee -a "$OUT/machine.txt"
tail -n 40 "$OUT/gpu.log"
