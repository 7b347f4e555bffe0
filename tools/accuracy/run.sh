#!/usr/bin/env bash
# One command for docs/accuracy.md: builds the C++ runtime (llava), generates the test split,
# calibrates FitPrune on the training split, evaluates every method x keep ratio and rewrites the
# page's generated block, docs/accuracy/results.json and docs/img/accuracy.png.
#   bash tools/accuracy/run.sh [--retrain] [--count N]
#     --retrain   train the model again first (tools/accuracy/train.py, 4000 steps, ~52 min on 2 idle cores) into
#                 tests/data/llava-shapes-fp32 and say whether it equals the committed checkpoint
#     --count N   test questions (default 1000)
#   TOKENSEL_BUILD_DIR  where llava is built (default build-accuracy; an existing build is reused)
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$SECONDS
retrain=0
count=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --retrain) retrain=1 ;;
    --count) count=$2; shift ;;
    *) echo "run.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
  shift
done
bash tools/install-deps.sh
pip_q=(-m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
python3 "${pip_q[@]}" torch==2.15.0 transformers==5.23.0 sentencepiece protobuf safetensors pillow numpy matplotlib
model=tests/data/llava-shapes-fp32
if [ "$retrain" = 1 ]; then
  before=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
  # The committed model's two phases: 3000 steps on the uniform question mix, then 1000 steps from
  # there with left-of questions 4x as frequent and the patch-column auxiliary target (lr 5e-4).
  phase1=$(mktemp -d)
  python3 tools/accuracy/train.py --out "$phase1" --steps 3000
  python3 tools/accuracy/train.py --init "$phase1" --out "$model" --steps 1000 --lr 5e-4 \
    --type-weights 1,1,4,1 --aux-columns --aux-weight 0.5 --train-split-worker 1
  rm -rf "$phase1"
  after=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
  if [ "$before" = "$after" ]; then echo "accuracy: retrained weights equal the committed ones";
  else echo "accuracy: retrained weights differ from the committed ones (other versions or thread count?)"; fi
fi
build=${TOKENSEL_BUILD_DIR:-build-accuracy}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOKENSEL_BUILD_TESTS=OFF \
    -DTOKENSEL_BUILD_BENCHMARKS=OFF -DTOKENSEL_BUILD_EXAMPLES=ON
fi
cmake --build "$build" --target llava -j "$(nproc)"
python3 tools/accuracy/evaluate.py --llava "$build/examples/llava/llava" --model "$model" --count "$count"
echo "accuracy: done in $((SECONDS - start)) s"
