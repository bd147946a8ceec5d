#!/usr/bin/env bash
# Multi-node GPU training without a scheduler: run this once on every node.
#
#   # node 0 (its address is the coordinator):
#   COORDINATOR=10.0.0.1:1234 NUM_NODES=2 NODE_RANK=0 launch/gpu_node.sh \
#       --config configs/qwen2_7b.py:gpu --workdir /shared/runs/qwen2-7b
#   # node 1: the same with NODE_RANK=1
#
# One process per node drives all of the node's GPUs; seallm_jax.distributed reads the JAX_*
# variables below and calls jax.distributed.initialize. The workdir must be shared by all nodes.
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=host:port (the address of node 0 and a free port)}"
: "${NUM_NODES:?set NUM_NODES}"
: "${NODE_RANK:?set NODE_RANK (0..NUM_NODES-1)}"

export JAX_COORDINATOR_ADDRESS=$COORDINATOR
export JAX_NUM_PROCESSES=$NUM_NODES
export JAX_PROCESS_ID=$NODE_RANK
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

exec seallm-jax train "$@"
