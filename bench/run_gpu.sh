#!/usr/bin/env bash
# Everything issue #6 measures on a GPU, in one device call (bench/README.md has the figures).
#
#   here, once:   python bench/gpu_finetune.py --prepare     # writes bench/_shared/ (git-ignored, ~46 MiB)
#   device call:  run(command="bash bench/run_gpu.sh", carry=["bench/_shared"], timeout_s=600)
#
# About 4 minutes on an H100; at most 7 (the sum of the timeouts). Each benchmark has its own timeout, so a
# hang costs that one alone. Logs and JSON results go to $OUT, which the device call brings back
# (/tmp/minispan-gpu-bench when run by hand).
# BENCH_ARGS is added to every benchmark's flags: BENCH_ARGS=--tiny rehearses the whole script on a CPU.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/minispan-gpu-bench}
SHARED=bench/_shared
mkdir -p "$OUT"
# The GPU box has torch and transformers but not minispan: the scripts import it from this checkout.
export PYTHONUNBUFFERED=1
for needed in "$SHARED/squad2-dev-half.json" "$SHARED/minilm-bf16/model.safetensors" "$SHARED/minilm-bf16/vocab.txt"; do
    if [ ! -f "$needed" ]; then
        echo "missing $needed: run 'python bench/gpu_finetune.py --prepare' first and carry bench/_shared" >&2
        exit 2
    fi
done

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import sys, torch, transformers, tokenizers, numpy
print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__,
      'tokenizers', tokenizers.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/env.txt"

status=0
bench() {  # bench SECONDS NAME ARGS...: one benchmark, its log and exit status
    local seconds=$1 name=$2
    shift 2
    echo "== $name: python3 $* ($(date -u +%T))"
    # shellcheck disable=SC2086  # BENCH_ARGS: words on purpose
    timeout "$seconds" python3 "$@" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/$name.log"
    local rc=$?
    [ "$rc" -eq 0 ] || { echo "== $name exited with $rc"; status=1; }
}

# The tests that need a GPU: CUDA graphs against the eager step (they skip on the CPU).
echo "== tests/test_cuda_graphs.py ($(date -u +%T))"
timeout 60 python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tee "$OUT/tests.log" \
    || { echo "== tests exited with $?"; status=1; }
# (a) minispan, with and without CUDA graphs, (b) transformers padded to 384, (c) transformers on (a)'s
# batches; dev prediction speed.
bench 150 gpu_train bench/gpu_train.py --configs a,a-eager,b,c --data "$SHARED/squad2-dev-half.json" \
    --vocab "$SHARED/minilm-bf16" --json "$OUT/gpu_train.json"
# MiniLM fine-tune: train.py against transformers' model, 12 articles / 4 held out; bf16 against fp32.
bench 200 gpu_finetune bench/gpu_finetune.py --data "$SHARED/squad2-dev-half.json" --model "$SHARED/minilm-bf16" \
    --json "$OUT/gpu_finetune.json"
# Not run: --configs a-compile. On an H200 (torch 2.11) compiling did not finish within 150 s (bench/README.md).
exit $status
