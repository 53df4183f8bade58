#!/usr/bin/env bash
# Multi-machine training with torchrun: run this on every machine of the job.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host0)
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=host0 ./cli/launch/torchrun.sh cfg.json      (on host1)
# Each process joins the group torchrun sets up (arrows does not spawn under torchrun) and takes
# the GPU of its local rank. Extra arguments go to `arrows train`.
# Also read: GPUS_PER_NODE (processes per machine; default: the GPUs in CUDA_VISIBLE_DEVICES when
# set, else those nvidia-smi lists),
# MASTER_PORT (default: a free port on one machine, 29500 across machines). CPU processes: GPUS_PER_NODE=2 ./cli/launch/torchrun.sh cfg.json --device cpu
set -euo pipefail
CONFIG="${1:?usage: torchrun.sh CONFIG [arrows train options]}"; shift
# nvidia-smi ignores CUDA_VISIBLE_DEVICES and lists every GPU of the machine: on a machine shared
# that way, one process per GPU listed would start processes with no GPU of their own. Only its
# "GPU n:" lines count (a MIG instance is listed on a line of its own under its GPU).
if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    FOUND=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
    WHERE="CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' names none"
else
    FOUND=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
    WHERE="nvidia-smi lists none"
fi
PROCS="${GPUS_PER_NODE:-$FOUND}"
if [ "$PROCS" -lt 1 ]; then
    echo "torchrun.sh: no GPU found ($WHERE); set GPUS_PER_NODE to the number of processes per machine" >&2
    exit 2
fi
if [ "${NNODES:-1}" = 1 ] && [ -z "${MASTER_PORT:-}" ]; then
    # One machine: torchrun picks a free port itself. A fixed one made a second run on the same
    # machine fail at once (EADDRINUSE on 29500).
    GROUP=(--standalone)
else
    GROUP=(--nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}")
fi
exec torchrun "${GROUP[@]}" --nproc_per_node "$PROCS" -m arrows train "$CONFIG" "$@"
