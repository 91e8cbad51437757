#!/usr/bin/env bash
# Run the same `python -m mmfm.train ...` command on every worker of a Cloud TPU VM (pod slice).
#
#   experiments/tpu/launch.sh [options] -- <mmfm.train flags>
#
#   experiments/tpu/launch.sh --tpu my-v4-32 --zone us-central2-b -- \
#       --config experiments/configs/demo.py --workdir gs://my-bucket/runs/demo \
#       --config.data.dir=gs://my-bucket/data --config.mesh.shape='(1,-1,1)'
#
# Every worker runs the identical command with MMFM_DISTRIBUTED=auto: jax.distributed.initialize()
# finds the coordinator, process count and index from the TPU metadata. Process 0 writes logs and
# TensorBoard; all processes read their own slice of the data and take part in checkpoints.
#
# Actions (--action):
#   run     (default) start training on all workers, detached; output in ~/mmfm_train.log per worker
#   setup   clone/update the repository and install the venv on all workers (--repo URL)
#   logs    tail the log of worker 0 (--worker N for another)
#   stop    SIGTERM the training process on all workers (the trainer checkpoints, then exits)
# Options: --tpu NAME --zone ZONE [--project P] [--repo-dir DIR] [--repo URL] [--ref BRANCH]
#          [--foreground] [--dry-run] (print the gcloud command instead of running it)
set -euo pipefail

TPU="" ZONE="" PROJECT="" ACTION=run REPO_DIR='~/mmfm' REPO_URL="" REF=main WORKER=0
FOREGROUND=0 DRY_RUN=0 TRAIN_ARGS=()

die() { echo "launch.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --action) ACTION="$2"; shift 2 ;;
    --repo-dir) REPO_DIR="$2"; shift 2 ;;
    --repo) REPO_URL="$2"; shift 2 ;;
    --ref) REF="$2"; shift 2 ;;
    --worker) WORKER="$2"; shift 2 ;;
    --foreground) FOREGROUND=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) die "unknown option $1 (train flags go after --)" ;;
  esac
done
[[ -n "$TPU" ]] || die "--tpu NAME is required"
[[ -n "$ZONE" ]] || die "--zone ZONE is required"

# Quote each train flag for the remote shell.
quoted=""
for a in "${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}"; do quoted+=" $(printf '%q' "$a")"; done

case "$ACTION" in
  run)
    [[ -n "$quoted" ]] || die "give the train flags after --, e.g. -- --config ... --workdir gs://..."
    train="env MMFM_DISTRIBUTED=auto PYTHONUNBUFFERED=1 .venv/bin/python -m mmfm.train$quoted"
    if [[ $FOREGROUND == 1 ]]; then
      remote="cd $REPO_DIR && $train"
    else
      remote="cd $REPO_DIR && (nohup $train > ~/mmfm_train.log 2>&1 & echo \$! > ~/mmfm_train.pid) && echo started pid \$(cat ~/mmfm_train.pid) on \$(hostname)"
    fi
    workers=all ;;
  setup)
    [[ -n "$REPO_URL" ]] || die "--action setup needs --repo URL"
    # The lock file pins jax; jax[tpu] at the same version brings the matching libtpu.
    remote="(test -d $REPO_DIR/.git || git clone -q $REPO_URL $REPO_DIR) && cd $REPO_DIR && git fetch -q origin && git checkout -q $REF && git pull -q --ff-only origin $REF && python3 -m venv .venv && .venv/bin/pip install -q -r requirements/lock.txt && .venv/bin/pip install -q --no-deps -e . && .venv/bin/pip install -q \"jax[tpu]==\$(sed -n 's/^jax==//p' requirements/lock.txt)\""
    workers=all ;;
  logs) remote="tail -n 50 -f ~/mmfm_train.log"; workers="$WORKER" ;;
  stop) remote="test -f ~/mmfm_train.pid && kill -TERM \$(cat ~/mmfm_train.pid) && echo sent SIGTERM on \$(hostname) || echo no run on \$(hostname)"; workers=all ;;
  *) die "unknown --action $ACTION (run|setup|logs|stop)" ;;
esac

cmd=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" "--worker=$workers" --command "$remote")
[[ -n "$PROJECT" ]] && cmd+=(--project "$PROJECT")
if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
else
  "${cmd[@]}"
fi
