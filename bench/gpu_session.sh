#!/usr/bin/env bash
# Every GPU check of the project, for a session that is lent a CUDA machine (see README,
# "Performance"). A lease has 15 minutes of device time, machine start included (about 40 s on
# the first lease), so the checks come in parts, each one device call, run back to back on the
# warm machine; each step has its own time limit so that one hang cannot eat the rest. Durations
# estimated from the H200 lease of 2026-11-28:
#   bash bench/gpu_session.sh 1   # gpu_anchor.py (about 3 minutes alone), then GPT-2 small with
#                                 # both heads and the plain one unpadded, the loader check,
#                                 # profiles                                                   (~7 min)
#   bash bench/gpu_session.sh 5   # GPT-medium, the same three heads, profiles; against part 1's
#                                 # anchor when part 1 ran on this machine (else its own)     (~6 min)
#   bash bench/gpu_session.sh 2   # the CUDA tests: test_cuda.py, the Triton kernels on CUDA
#                                 # (~8 min one at a time; side by side with pytest-xdist, less)
#   bash bench/gpu_session.sh 3   # attention kernels; GRU/LSTM against gpu_anchor_rnn.py    (~4 min)
#   bash bench/gpu_session.sh 4   # the synthetic arrows on the GPU (bench/synthetic_arrows.py)  (~5 min)
# One lease holds two or three of them: take first what the last lease left unmeasured (the
# README's "Status" says what that is).
#
# Prepare on the development machine (the GPU machine has no network and gets only the checkout):
#   maturin build --release --out dist        # the abi3 wheel; runs on the GPU machine's Python 3.12
#   rm -rf shared && cp -r ../shared shared   # anchors and texts; ./shared is git-ignored, and travels
#   pip download --no-deps pytest-xdist execnet -d dist   # part 2 runs the tests side by side with it
# and name dist in the device call's `carry` (it is git-ignored, so it travels only when carried).
# Logs and results go to $OUT (default bench/out/gpu).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
PART=${1:?give the part: 1, 2, 3, 4 or 5}

# arrows' wheel beside the machine's own torch/triton/numpy/... (no network there: --no-deps;
# every dependency of arrows is in that machine's image). Not a venv: the machine's python3 is
# itself a venv, whose packages a --system-site-packages venv made from it would not see.
SITE=/tmp/arrows-site
if [ ! -x $SITE/bin/arrows ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target $SITE dist/arrows-*.whl \
        $(ls dist/pytest_xdist-*.whl dist/execnet-*.whl 2>/dev/null) || exit 1
fi
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu_part$PART.txt"
$PY -c "import arrows, torch, triton; print('arrows', arrows.__file__, 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu_part$PART.txt"

# One bench run: its log and its results file (bench/out/train.json, rewritten by every run) kept.
bench() {  # bench NAME SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" $PY bench/train.py --gpu "$@" 2>&1 | tee "$OUT/bench_$name.txt"
    cp bench/out/train.json "$OUT/train_$name.json" 2>/dev/null || true
}
# From tests/ so that the installed wheel, not python/ in the checkout, is imported. Failures are
# printed as they happen (conftest.py), so a run cut off by its limit still shows them.
cuda_tests() {  # cuda_tests NAME SECONDS PYTEST-ARGS...
    local name=$1 limit=$2
    shift 2
    (cd tests && ARROWS_TEST_INSTAFAIL=1 timeout "$limit" $PY -m pytest -q -rs -p no:cacheprovider "$@") 2>&1 | tee "$OUT/pytest_$name.txt"
}

case "$PART" in
1)
    bench training 500 --only training,memory,loader --models gpt2small --heads plain,plain-unpadded,chunked --steps 10 --warm 3 --profile
    # Kept on the machine (bench/out is git-ignored) for part 5 while the machine stays warm.
    cp bench/out/train.json bench/out/gpu_anchor_figures.json 2>/dev/null || true
    ;;
2)
    # Most of the tests' time is compiling (torch.compile, Triton autotuning), on the CPU: with
    # pytest-xdist they run six at a time on the machine's 16 cores; the test that fills the GPU's
    # memory runs by itself afterwards.
    side_by_side=()
    $PY -c "import xdist" 2>/dev/null && side_by_side=(-n 6)
    cuda_tests cuda 480 "${side_by_side[@]}" -m "not alone" test_cuda.py test_triton_attention.py test_triton_cross_entropy.py test_generate.py
    cuda_tests cuda_alone 90 -m alone test_cuda.py
    ;;
3)
    bench attention 80 --only attention
    bench rnn 150 --only rnn --steps 8 --warm 3
    ;;
4)
    # Its work folders (texts, stores, runs, reports) stay in bench/out: a device call brings back
    # at most 8 files from $OUT, and the four languages' files there would crowd out the results.
    timeout 540 $PY bench/synthetic_arrows.py --out bench/out/synthetic 2>&1 | tee "$OUT/synthetic.txt"
    cp bench/out/synthetic/synthetic_arrows.json "$OUT/" 2>/dev/null || true
    ;;
5)
    from=()
    [ -f bench/out/gpu_anchor_figures.json ] && from=(--anchor-from bench/out/gpu_anchor_figures.json)
    bench medium 560 --only training --models medium --heads plain,plain-unpadded,chunked --steps 10 --warm 3 --profile "${from[@]}"
    ;;
*)
    echo "unknown part $PART: give 1, 2, 3, 4 or 5" >&2
    exit 2
    ;;
esac
