#!/usr/bin/env bash
# Issue 16's long CPU runs for one family, in order, each resumable from its committed state:
#
#   1. the prior           runs/<f>32-prior         (exactpost train, lr 3e-4)
#   2. EPS from that prior  runs/<f>32-eps-long      (exactpost finetune --objective eps, lr 1e-4)
#   3. Palette, same budget runs/<f>32-palette-long  (exactpost finetune --objective palette)
#
# EPS and Palette decay their learning rate linearly to 0 over the last DECAY steps (default
# 10000). It was added when the EPS runs resumed at step 14,704 (faces) and 11,757 (CIFAR),
# before it acts at STEPS - DECAY, so both objectives follow the same curve.
#
#   scripts/long_runs.sh faces|cifar            # every run to STEPS (default 30000)
#   STEPS=31000 scripts/long_runs.sh faces      # a later, longer target
#
# Rerunning continues where the runs are: a finished run is skipped in seconds (its state is
# at STEPS, or it was removed and the run's model kept: final), a stopped one resumes
# bit-exactly. SIGTERM (or Ctrl-C) to this script is passed to the running job, which saves
# its step; the chain then ends with exit 143, and the next session reruns the same line.
# One family per core: `taskset -c 0 env OMP_NUM_THREADS=1 scripts/long_runs.sh faces`.
# EPS and Palette start from runs/<f>32-prior/model, which stays in the tree until they end;
# the settings are the bundled models' recipes (their cards' `command`), 1 thread, fp32
# channels-last (faster than bf16 on this CPU without AMX, see README "Long runs").
set -euo pipefail

family=${1:?usage: scripts/long_runs.sh faces|cifar}
steps=${STEPS:-30000}
decay=${DECAY:-10000}
data_dir=${DATA_DIR:-../shared/data}
exactpost=${EXACTPOST:-exactpost}

case "$family" in
  faces)
    data=(--data "$data_dir/faces64.npz" --data-split 0 --image-size 32)
    prior=(train --preset tiny --warmup-steps 500 "${data[@]}")
    tag=faces32 ;;
  cifar)
    data=(--data "$data_dir/cifar10_32.npz" --data-key train_images --image-size 32)
    prior=(train --objective prior --init-from models/faces-32/prior --warmup-steps 200 "${data[@]}")
    tag=cifar32 ;;
  *)
    echo "long_runs.sh: unknown family '$family'; use faces or cifar" >&2
    exit 2 ;;
esac

. "$(dirname "$0")/chain.sh"  # run: one job at a time, a stop reaches it

stage() {  # stage RUN_DIR COMMAND...: train RUN_DIR unless it is final (model kept, state removed)
  local dir=$1; shift
  if [ -e "$dir/model.json" ] && [ ! -e "$dir/state.json" ]; then
    echo "long_runs.sh: $dir is final (its model is kept, its state removed); skipping it" >&2
    return
  fi
  run "$@" --run-dir "$dir"
}

common=(--batch-size 64 --seed 0 --threads 1 --no-progress --channels-last true --precision fp32
        --checkpoint-every 250 --steps "$steps")

stage "runs/$tag-prior" "$exactpost" "${prior[@]}" "${common[@]}" --lr 3e-4 --eval-every 1000 --eval-images 16 \
  --snapshot-every 2000

for objective in eps palette; do
  stage "runs/$tag-$objective-long" "$exactpost" finetune --objective "$objective" "${data[@]}" "${common[@]}" \
    --lr 1e-4 --warmup-steps 200 --sigma-y 0.05 --uniform-frac 0.5 --eval-every 500 --eval-images 64 \
    --snapshot-every 1000 --lr-decay-steps "$decay" --init-from "runs/$tag-prior/model"
done
