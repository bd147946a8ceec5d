#!/usr/bin/env bash
# Run one command on every worker of a Cloud TPU pod slice (set up the repo first, then train).
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- seallm-jax train --config configs/qwen2_7b.py:tpu \
#       --workdir gs://BUCKET/runs/qwen2-7b
#
#   launch/tpu_pod.sh TPU_NAME ZONE -- seallm-jax train --config configs/qwen2_7b.py:tpu \
#       --workdir gs://BUCKET/runs/qwen2-7b --config.model.init_from=gs://BUCKET/models/qwen2-7b \
#       --config.data.source=tokens --config.data.path=gs://BUCKET/stores/sea
#
# Every worker runs the same command; JAX finds the other workers itself (jax.distributed.initialize
# auto-detects the TPU pod), each worker loads its share of the batch, and all take part in
# checkpoint saves. A pod has no shared filesystem: the workdir is on gs:// so that every worker sees
# the same checkpoints; a token store on gs:// is copied once to each worker's local disk
# (~/.cache/seallm_jax/remote, or $SEALLM_JAX_CACHE/remote). Credentials: the TPU VMs' service
# account, which needs roles/storage.objectAdmin on the bucket (docs/training.md, "Object storage").
# Environment: PROJECT (gcloud project, optional), REPO_URL (git URL to clone; default: copy this
# checkout with `gcloud compute tpus tpu-vm scp`), SETUP=0 to skip installation.
set -euo pipefail

if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 TPU_NAME ZONE -- COMMAND..." >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 3
COMMAND=$(printf '%q ' "$@")
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR=seallm-jax

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

if [[ "${SETUP:-1}" == "1" ]]; then
  if [[ -n "${REPO_URL:-}" ]]; then
    ssh_all "test -d $REMOTE_DIR || git clone $REPO_URL $REMOTE_DIR; cd $REMOTE_DIR && git pull --ff-only"
  else
    ROOT=$(cd "$(dirname "$0")/.." && pwd)
    tar -C "$ROOT" --exclude=.git -czf /tmp/seallm-jax.tgz .
    gcloud compute tpus tpu-vm scp /tmp/seallm-jax.tgz "$TPU_NAME":~/ --zone="$ZONE" $PROJECT_FLAG --worker=all
    ssh_all "mkdir -p $REMOTE_DIR && tar -C $REMOTE_DIR -xzf ~/seallm-jax.tgz"
  fi
  ssh_all "cd $REMOTE_DIR && pip install -q 'jax[tpu]' -e ."
fi

# Only process 0 prints progress and writes metrics.
ssh_all "cd $REMOTE_DIR && $COMMAND"
