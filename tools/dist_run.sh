#!/usr/bin/env bash
# torchrun launcher shared by dist_train.sh and dist_test.sh:
#   tools/dist_run.sh SCRIPT NPROC [SCRIPT args...]   (SCRIPT: train.py | test.py)
# NNODES, NODE_RANK, MASTER_ADDR and PORT come from the environment.
set -euo pipefail
SCRIPT=$1
NPROC=$2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$ROOT:${PYTHONPATH:-}" torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --nproc_per_node="$NPROC" \
  --master_port="${PORT:-29500}" "$ROOT/tools/$SCRIPT" "${@:3}" --launcher pytorch
