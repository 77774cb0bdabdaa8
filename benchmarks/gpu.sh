#!/usr/bin/env bash
# Every GPU figure the README's performance section needs, in one run of a few minutes.
#
#   benchmarks/gpu.sh file:///path/to/mnist/mirror/ [OUT_DIR]
#
# On a machine with one NVIDIA GPU and this project installed (`make setup`, or the trainer
# image), with the real MNIST as a local mirror (`python ../shared/tools/mnist_mirror.py DIR`,
# then file://DIR/mirror/). It prints, and keeps under OUT_DIR (default: a temporary folder):
#   1. the data path: naive (torchvision + DataLoader) vs this project's device-resident path vs
#      a plain loop, batch 64 and batch 512, float32;
#   2. what bf16-mixed, channels-last and torch.compile add on the device path (batch 512;
#      torch.compile only where a C compiler is installed, else it says so);
#   3. the fast preset through the pipeline (`--local --preset fast`): time and test accuracy;
#   4. the classic recipe, 14 epochs, through the pipeline: time and test accuracy.
# DEVICE=cpu runs the same steps on the CPU, CLASSIC_EPOCHS shortens step 4 and EXPECTED_MD5
# (JSON) accepts another MNIST-format mirror, to try the script where no GPU is on a small
# data set (the numbers then mean nothing).
set -euo pipefail

mirror=${1:?usage: benchmarks/gpu.sh file:///path/to/mnist/mirror/ [OUT_DIR]}
out=${2:-$(mktemp -d -t kfp-lightning-gpu-XXXXXX)}
device=${DEVICE:-cuda}
classic_epochs=${CLASSIC_EPOCHS:-14}
python=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$out"

gpus=1
if [[ $device == cuda ]]; then
    "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || { echo "error: no CUDA device is visible to $python" >&2; exit 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    gpus=0
fi
"$python" -c 'import torch, lightning; print(f"torch {torch.__version__}, lightning {lightning.__version__}")'
started=$SECONDS

section() { printf '\n=== %s (%d s so far)\n' "$1" "$((SECONDS - started))"; }
md5=()
if [[ -n ${EXPECTED_MD5:-} ]]; then md5=(--expected-md5 "$EXPECTED_MD5"); fi
data_path() {
    "$python" benchmarks/data_path.py --mirror "$mirror" --device "$device" "${md5[@]}" "$@"
}

section "1. data path, batch 64, float32"
data_path --batch-size 64 --output "$out/batch64.json"
section "1. data path, batch 512, float32"
data_path --batch-size 512 --output "$out/batch512.json"

section "2. device path, batch 512: bf16-mixed"
data_path --batch-size 512 --rows device --precision bf16-mixed --output "$out/bf16.json"
section "2. device path, batch 512: channels-last"
data_path --batch-size 512 --rows device --channels-last on --output "$out/channels_last.json"
section "2. device path, batch 512: torch.compile"
if command -v "${CC:-cc}" >/dev/null || command -v gcc >/dev/null; then
    data_path --batch-size 512 --rows device --torch-compile on --output "$out/compile.json"
else
    echo "skipped: torch.compile needs a C compiler (Triton builds its kernels), and none is here"
fi

pipeline() {
    local name=$1 begin=$SECONDS
    shift
    "$python" pipelines/mnist.py --local --mirror "$mirror" --gpus "$gpus" "${md5[@]}" \
        --output-dir "$out/$name" "$@" >"$out/$name.log" 2>&1 \
        || { tail -20 "$out/$name.log" >&2; exit 1; }
    echo "$name: whole pipeline $((SECONDS - begin)) s"
    grep -E '(test accuracy .* epochs|timing:)' "$out/$name.log" | sed 's/^ *//' || true
    "$python" - "$out/$name/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["metrics"]
print(f"  test accuracy {s['test_accuracy']:.4f} after {s['epochs']} epochs; training "
      f"{m['train_seconds']:.1f} s at {m['train_samples_per_second']:.0f} samples/s")
EOF
}

section "3. fast preset through the pipeline (--local --preset fast)"
pipeline fast --preset fast
section "4. classic recipe, $classic_epochs epochs, through the pipeline"
pipeline classic --epochs "$classic_epochs"

section "done: results in $out"
