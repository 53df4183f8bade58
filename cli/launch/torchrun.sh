#!/usr/bin/env bash
# Multi-machine training with torchrun: run this on every machine of the job.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host0)
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host1)
# Each process joins the group torchrun sets up (arrows does not spawn under torchrun) and takes
# the GPU of its local rank. Extra arguments go to `arrows train`.
set -euo pipefail
CONFIG="$1"; shift
exec torchrun \
    --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
    --nproc_per_node "${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}" \
    --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m arrows train "$CONFIG" "$@"
