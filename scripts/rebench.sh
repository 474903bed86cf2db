#!/usr/bin/env bash
# Issue 16's re-bundling and re-measuring, once scripts/long_runs.sh has finished a family:
#
#   scripts/rebench.sh faces|cifar     # one family (one core each: taskset -c N env OMP_NUM_THREADS=1 ...)
#   scripts/rebench.sh finish          # after both: the bundled-model test reference, the paper-claim
#                                      # table of both 100-image benches, RESULTS.md
#   DRY_RUN=1 scripts/rebench.sh faces # print the commands it would run, run nothing
#
# For a family, in order (each stage skipped when its result is already there for these weights):
#   1. refuse (exit 2) unless runs/<f>32-{prior,eps-long,palette-long} have reached STEPS (30000)
#   2. bundle the three into models/<name>/   (skipped where the bundled sha256 is the run's)
#   3. re-tune the baselines' step sizes on the new prior (benchmarks/tune_baselines.py, validation
#      images; skipped when the family's tuning JSON was made for this prior's sha256)
#   4. model_quality (EPS 1-NFE mean vs the Gaussian LMMSE, cached; --update-cards)
#   5. the 100-image bench, paper protocol (every method; it carries the calibration columns of
#      issue 21, so no separate calibration run) and the EPS NFE sweep with the default sampler;
#      both resume from their caches, so rerunning them costs seconds once done
#   6. out of distribution (benchmarks/ood.py; skipped when made for this EPS model's steps)
#   7. the EPS mean's error split into measured and unmeasured directions (benchmarks/error_split.py,
#      32 test images, about 2 minutes)
# Rerunning after a stop continues: finished stages are skipped, the benches resume. SIGTERM or
# Ctrl-C to this script reaches the running job; the chain then ends with exit 143.
set -euo pipefail

what=${1:?usage: scripts/rebench.sh faces|cifar|finish}
steps=${STEPS:-30000}
data_dir=${DATA_DIR:-../shared/data}
exactpost=${EXACTPOST:-exactpost}
python=${PYTHON:-python}
results=benchmarks/results

case "$what" in
  faces)
    tag=faces32 name=faces-32 tuning=baseline_tuning
    quality=(--data "$data_dir/faces64.npz" --train-split 0 --test-split 2)
    tune=(--data "$data_dir/faces64.npz" --split 1 --n 8)
    ood=(--photos "$data_dir/cifar10_32.npz" --photos-key test_images --n 8) ;;
  cifar)
    tag=cifar32 name=cifar10-32 tuning=baseline_tuning_cifar10-32
    quality=(--data "$data_dir/cifar10_32.npz" --train-key train_images --test-key test_images)
    tune=(--model cifar10-32 --data "$data_dir/cifar10_32.npz" --key test_images --split none --last --n 8
          --name baseline_tuning_cifar10-32)
    ood=(--photos "$data_dir/faces64.npz" --photos-split 2 --n 8) ;;
  finish) ;;
  *)
    echo "rebench.sh: unknown argument '$what'; use faces, cifar or finish" >&2
    exit 2 ;;
esac

. "$(dirname "$0")/chain.sh"  # run: one job at a time, a stop reaches it

field() {  # field FILE KEY...: a JSON file's value at KEY/KEY/...; empty when the file or key is missing
  "$python" - "$@" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for key in sys.argv[2:]:
        value = value[key]
except (OSError, ValueError, KeyError, TypeError):
    value = ""
print(value)
EOF
}

skip() { echo "rebench.sh: $*; skipping" >&2; }

if [ "$what" = finish ]; then
  run "$python" scripts/bundled_reference_means.py tests/data/bundled_reference_means.npz
  run "$python" benchmarks/paper_claim_images.py
  run "$python" benchmarks/collect_results.py
  exit 0
fi

# 1. the three runs are final
for r in prior eps-long palette-long; do
  got=$(field "runs/$tag-$r/model.json" steps)
  if [ -z "$got" ] || [ "$got" -lt "$steps" ]; then
    echo "rebench.sh: runs/$tag-$r is at step ${got:-none}, not $steps; finish it first (scripts/long_runs.sh $what)" >&2
    exit 2
  fi
done

# 2. bundle
for r in prior eps-long palette-long; do
  kind=${r%-long}
  if [ "$(field "runs/$tag-$r/model.json" sha256)" = "$(field "models/$name/$kind.json" sha256)" ]; then
    skip "models/$name/$kind is runs/$tag-$r already"
  else
    run "$python" scripts/bundle_model.py "runs/$tag-$r" "$name" "$kind" \
      --note "issue 16 long run: $steps steps x 64 on one CPU core (scripts/long_runs.sh $what)"
  fi
done
prior_sha=$(field "runs/$tag-prior/model.json" sha256)
eps_sha=$(field "runs/$tag-eps-long/model.json" sha256)

# 3. baselines tuned on the new prior
if [ "$(field "$results/$tuning.json" model sha256)" = "$prior_sha" ]; then
  skip "$results/$tuning.json was tuned on this prior"
else
  run "$python" benchmarks/tune_baselines.py "${tune[@]}" --threads 1
fi

# 4. model quality
if [ "$(field "$results/model_quality_$name.json" eps_sha256)" = "$eps_sha" ]; then
  skip "$results/model_quality_$name.json is for this EPS model"
else
  run "$python" benchmarks/model_quality.py --model "$name" "${quality[@]}" --n 100 --threads 1 \
    --lmmse-cache "$results/lmmse_$name.json" --update-cards
fi

# 5. the benches (cached: a finished one costs seconds)
run "$exactpost" bench images --model "$name" --images 100 --samples 4 --batch 20 --seed 0 --sigma-y 0.05 \
  --out "$results/bench_images_${name}_n100" --threads 1
run "$exactpost" bench images --model "$name" --tasks inpaint-random,sr4 --methods eps --nfe 5,10,20,50,100 \
  --images 8 --samples 4 --batch 8 --seed 0 --sigma-y 0.05 --out "$results/bench_images_${name}_sweep_default" \
  --no-bare --threads 1

# 6. out of distribution
if [ "$(field "$results/ood_$name.json" eps_card_steps)" = "$(field "runs/$tag-eps-long/model.json" steps)" ]; then
  skip "$results/ood_$name.json is for this EPS model"
else
  run "$python" benchmarks/ood.py --model "$name" "${ood[@]}" --threads 1
fi

# 7. where the EPS mean's error lies
run "$python" benchmarks/error_split.py --model "$name" "${quality[@]}" --n 32 --threads 1
