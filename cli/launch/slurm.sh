#!/usr/bin/env bash
# SLURM: one task per GPU; arrows reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and joins the
# group (no spawning). Submit with: sbatch cli/launch/slurm.sh cli/configs/gpt_medium.json
#SBATCH --job-name=arrows
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
# SIGTERM to every task 5 minutes before the time limit (also what a preemption or scancel sends):
# each stops after its step with a checkpoint of it, where the limit's SIGKILL lost up to
# save_every steps. Submitting the same command again continues the run.
#SBATCH --signal=TERM@300
set -euo pipefail
CONFIG="${1:?usage: sbatch cli/launch/slurm.sh CONFIG [arrows train options]}"; shift
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# A port of this job's own: two jobs whose first node is the same would both claim a fixed 29500.
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
# --kill-on-bad-exit: a task that fails or is killed (out of memory) ends the others, which would
# otherwise wait for it inside a collective until NCCL's or gloo's timeout (10 to 30 minutes).
# --cpus-per-task again: srun does not take it from the job in every Slurm version (Slurm 22.05 reads
# SRUN_CPUS_PER_TASK instead), and each task, its loader threads included, would get one core.
srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} arrows train "$CONFIG" "$@"
