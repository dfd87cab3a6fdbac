#!/usr/bin/env bash
# The GPU run, prepared for a machine lent for a few minutes: `make bench-gpu`'s default run (eager vs CUDA
# graphs at 512 and 768, batch 1/4/8, first image per mode; a container's start; the embedded server's images/s
# with batching off and on), then `make bench-mask` on CUDA (the mask model behind mask_prompt, fp16), with each
# part under its own time limit and its figures written as they come.
#
#   bash scripts/bench/device_check.sh        # from the repository root, on the GPU machine
#
# Results go to $OUT when set (a directory the caller collects), else bench-results/. Wheels the machine lacks
# may be brought in .whl/ (installed into /tmp/site, no network needed). The whole run stays under 9 minutes
# (7 for the GPU table, under 2 for the mask model).
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
# The mask model (CLIPSeg, full-size random weights built once into .models/, fp16): its load and first call,
# MaskModel.find at 512x512 and 12 MP, a 12 MP mask_prompt request's preparation, an outpainting extend. Each
# figure is a JSON line in $OUT/mask_model.jsonl as soon as it exists; the table is at the end of the log.
timeout 100 "$PYTHON" -m scripts.bench.mask_model --device cuda > "$OUT/mask_model.log" 2>&1
echo "scripts.bench.mask_model exit $?" | tee -a "$OUT/machine.txt"
tail -n 12 "$OUT/mask_model.log"
