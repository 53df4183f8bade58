#!/usr/bin/env bash
# Every GPU check of the project, for a session that is lent a CUDA machine (see README,
# "Performance"). In two parts, each under ten minutes on an H100/H200, so that each fits one
# device call with time to spare:
#   bash bench/gpu_session.sh 1   # CUDA tests; attention kernels; GRU/LSTM; the loader check     (~7 min)
#   bash bench/gpu_session.sh 2   # GPT-2 small and medium against gpu_anchor.py; the chunked head  (~8 min)
#   bash bench/gpu_session.sh 3   # the synthetic arrows on the GPU (bench/synthetic_arrows.py)     (~5 min)
#
# Prepare on the development machine (the GPU machine has no network and gets only the checkout):
#   maturin build --release --out dist     # the abi3 wheel; runs on the GPU machine's Python 3.12
#   rm -rf shared && cp -r ../shared shared   # anchors and texts; ./shared is git-ignored, and travels
# and name dist in the device call's `carry` (it is git-ignored, so it travels only when carried).
# Logs go to $OUT (default bench/out/gpu).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PART=${1:?give the part: 1, 2 or 3}

# A venv over the machine's own torch/triton/numpy/..., with arrows' wheel installed into it (no
# network there: --no-deps; every dependency of arrows is part of that machine's image).
PY=/tmp/arrows-venv/bin/python
if [ ! -x /tmp/arrows-venv/bin/arrows ]; then
    if python3 -m venv --system-site-packages /tmp/arrows-venv; then
        $PY -m pip install -q --no-index --no-deps dist/arrows-*.whl || exit 1
    else  # no venv module there: install beside the machine's packages instead
        python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/arrows-site dist/arrows-*.whl || exit 1
        export PYTHONPATH=/tmp/arrows-site PATH=/tmp/arrows-site/bin:$PATH
        PY=python3
    fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

case "$PART" in
1)
    # From tests/ so that the installed wheel, not python/ in the checkout, is imported.
    (cd tests && $PY -m pytest -q -rs test_cuda.py test_triton_attention.py test_head_loss.py) 2>&1 | tee "$OUT/pytest_cuda.txt"
    $PY bench/train.py --gpu --only attention,rnn,loader --steps 8 --warm 3 2>&1 | tee "$OUT/bench_part1.txt"
    ;;
2)
    $PY bench/train.py --gpu --only training,memory --steps 10 --warm 3 2>&1 | tee "$OUT/bench_part2.txt"
    ;;
3)
    $PY bench/synthetic_arrows.py --out "$OUT/synthetic" 2>&1 | tee "$OUT/synthetic.txt"
    ;;
*)
    echo "unknown part $PART: give 1, 2 or 3" >&2
    exit 2
    ;;
esac
cp bench/out/train.json "$OUT/" 2>/dev/null || true
