#!/usr/bin/env bash
# The GPU checks of one session, run on the lent machine (see docs/benchmarks.md). Needs the pure-Python
# wheels of open_clip_torch, ftfy, wcwidth, open-flamingo and einops-exts in .whl/ (carried). Every stage has
# its own time limit and writes its JSON and log under $OUT as soon as it ends. About 4 minutes on an H100.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-bench/results}
# Each results file keeps every run (bench/results_log.py): start from the committed history.
[ "$OUT" = bench/results ] || cp bench/results/*.json "$OUT"/
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
quiet() { grep -v "Loading\|Writing"; }
# OF-3B size, bf16, FSDP2 on one GPU, eager, with one profiled step (op and shape tables in the log)
timeout 120 python3 bench/bench_train.py --device cuda --skip-compare --batches 48 --iters 3 \
  --profile-batch 48 --out "$OUT/train_cuda_eager.json" 2>&1 | quiet > "$OUT/train_cuda_eager.log"
grep -E "batch|profiled" "$OUT/train_cuda_eager.log"
# the same with torch.compile on every decoder layer and cross-attention block: batch sweep
timeout 200 python3 bench/bench_train.py --device cuda --skip-compare --batches 48 56 64 --iters 3 --compile \
  --out "$OUT/train_cuda.json" 2>&1 | quiet > "$OUT/train_cuda.log"
grep -E "batch|wrote|Error" "$OUT/train_cuda.log" | tail -5
# the model benchmark (training step, 32-shot greedy and 3 beams) against the reference
timeout 90 python3 bench/bench_model.py --device cuda --size medium --iters 3 --bf16 \
  --out "$OUT/model_cuda_medium.json" 2>&1 | quiet > "$OUT/model_cuda.log"
tail -8 "$OUT/model_cuda.log"
