#!/usr/bin/env bash
# The shipped demo zoo, as it was built (docs/ZOO.md): seed 0 with every kind (baselines, OSRM and its
# ablations) in two parallel parts, four more training seeds of standard, gaussian and OSRM, and the
# full fine-tuning figures. One torch thread per process; two processes on a 2-core machine.
#   bash scripts/build_zoo.sh [BUILD_DIR]     (then: bash scripts/build_zoo.sh --install BUILD_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
SEED0_KINDS=(standard gaussian osrm osrm-random standard-scaled osrm-frozen)
SEED_KINDS=(standard gaussian osrm)

if [[ "${1:-}" == "--install" ]]; then
  BUILD=${2:?the build folder}
  $PY -m merging zoo combine "$BUILD/part-a" "$BUILD/part-b" --out zoo --overwrite
  mkdir -p zoo/seeds
  for n in 1 2 3 4; do  # copied as built: each manifest is what scripts/seed_study.py hashes
    rm -rf "zoo/seeds/$n" && cp -r "$BUILD/seed-$n" "zoo/seeds/$n"
  done
  cp "$BUILD/full_finetune.json" docs/full_finetune.json
  exit 0
fi

BUILD=${1:-build/zoo}
mkdir -p "$BUILD"
build() { $PY -m merging zoo build --shared-seed-tasks "$@"; }
(
  build --out "$BUILD/part-a" --train-only question_type sms_spam movie_sentiment --inits "${SEED0_KINDS[@]}"
  build --out "$BUILD/seed-1" --replicate 1 --inits "${SEED_KINDS[@]}"
  build --out "$BUILD/seed-3" --replicate 3 --inits "${SEED_KINDS[@]}"
) > "$BUILD/worker-1.log" 2>&1 &
(
  build --out "$BUILD/part-b" --train-only product_sentiment tweet_topic --inits "${SEED0_KINDS[@]}"
  build --out "$BUILD/seed-2" --replicate 2 --inits "${SEED_KINDS[@]}"
  build --out "$BUILD/seed-4" --replicate 4 --inits "${SEED_KINDS[@]}"
  $PY scripts/full_finetune.py --out "$BUILD/full_finetune.json"
) > "$BUILD/worker-2.log" 2>&1 &
wait
echo "built in $BUILD; install with: bash scripts/build_zoo.sh --install $BUILD"
