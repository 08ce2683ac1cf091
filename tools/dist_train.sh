#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG GPUS [train.py args...]
# NNODES, NODE_RANK, MASTER_ADDR and PORT come from the environment.
set -euo pipefail
exec "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
