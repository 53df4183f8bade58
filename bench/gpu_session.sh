#!/usr/bin/env bash
# Every GPU check of the project in one go, for a session that has a CUDA machine: the CUDA tests,
# the training benchmark against its anchors (plain and chunked head loss), and the synthetic
# arrows on the GPU. Needs arrows installed (e.g. the abi3 wheel from `maturin build --release`)
# and ../shared beside the checkout (the anchors). Logs go to $OUT (default bench/out/gpu).
#   bash bench/gpu_session.sh            # everything, about 10 minutes on an H100/H200
#   bash bench/gpu_session.sh quick      # the CUDA tests only
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -rs tests/test_cuda.py tests/test_models.py -k "cuda or flex or head_loss" 2>&1 | tee "$OUT/pytest_cuda.txt"
[ "${1:-}" = quick ] && exit 0
python bench/train.py 2>&1 | tee "$OUT/train_plain.txt"
python bench/train.py --head-loss chunked --steps 8 2>&1 | tee "$OUT/train_chunked.txt"
python bench/synthetic_arrows.py --out "$OUT/synthetic" 2>&1 | tee "$OUT/synthetic.txt"
