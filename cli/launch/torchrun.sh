#!/usr/bin/env bash
# Multi-machine training with torchrun: run this on every machine of the job.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host0)
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host1)
# Each process joins the group torchrun sets up (arrows does not spawn under torchrun) and takes
# the GPU of its local rank. Extra arguments go to `arrows train`.
# Also read: GPUS_PER_NODE (processes per machine; default: the GPUs nvidia-smi lists),
# MASTER_PORT (default 29500). CPU processes: GPUS_PER_NODE=2 ./cli/launch/torchrun.sh cfg.json --device cpu
set -euo pipefail
CONFIG="${1:?usage: torchrun.sh CONFIG [arrows train options]}"; shift
PROCS="${GPUS_PER_NODE:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}"
if [ "$PROCS" -lt 1 ]; then
    echo "torchrun.sh: no GPU found (nvidia-smi lists none); set GPUS_PER_NODE to the number of processes per machine" >&2
    exit 2
fi
exec torchrun \
    --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --nproc_per_node "$PROCS" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m arrows train "$CONFIG" "$@"
