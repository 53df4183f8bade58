#!/usr/bin/env bash
# SLURM: one task per GPU; arrows reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and joins the
# group (no spawning). Submit with: sbatch cli/launch/slurm.sh cli/configs/gpt_medium.json
#SBATCH --job-name=arrows
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
set -euo pipefail
CONFIG="${1:?usage: sbatch cli/launch/slurm.sh CONFIG [arrows train options]}"; shift
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
srun arrows train "$CONFIG" "$@"
