#!/usr/bin/env bash
# The GPU checks of one session, run on the lent machine (see README "Benchmarks"). Needs the pure-Python
# wheels of open_clip_torch, ftfy, wcwidth, open-flamingo and einops-exts in .whl/ (carried).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 170 python3 bench/bench_train.py --device cuda --skip-compare --batches 8 16 32 48 --iters 2 \
  --out "$OUT/train_cuda.json" 2>&1 | grep -v "Loading\|Writing" | tee "$OUT/train_cuda.log"
timeout 170 python3 bench/bench_model.py --device cuda --size medium --iters 2 --bf16 \
  --out "$OUT/model_cuda.json" 2>&1 | grep -v "Loading\|Writing" | tee "$OUT/model_cuda.log"
