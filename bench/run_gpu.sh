#!/usr/bin/env bash
# Everything issue #6 measures on a GPU, in two device calls (bench/README.md has the figures).
#
#   here, once:   python bench/gpu_finetune.py --prepare     # writes bench/_shared/ (git-ignored, ~46 MiB)
#   device calls: run(command="bash bench/run_gpu.sh speed", carry=["bench/_shared"], timeout_s=540)
#                 run(command="bash bench/run_gpu.sh finetune", carry=["bench/_shared"], timeout_s=360)
#
# speed:    the GPU tests, then (a), (b), (c) for the goal table, then (a) against (a) with compiled layers
#           (train.py --compile) in one process. About 5 minutes; at most 8.5 (the sum of its timeouts).
# finetune: the MiniLM fine-tune, minispan's runs with --compile (the default path was measured in session
#           10). About 4 minutes; at most 5.
# Each benchmark has its own timeout, so a hang costs that one alone. Logs and JSON results go to $OUT, which
# the device call brings back (/tmp/minispan-gpu-bench when run by hand).
# BENCH_ARGS is added to every benchmark's flags: BENCH_ARGS=--tiny rehearses the script on a CPU.
set -u -o pipefail
PART=${1:-}
case "$PART" in
    speed|finetune) ;;
    *) echo "usage: bash bench/run_gpu.sh speed|finetune" >&2; exit 2 ;;
esac
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

if [ "$PART" = speed ]; then
    # The tests that need a GPU: CUDA graphs against the eager step, also of compiled layers (they skip on
    # the CPU).
    echo "== tests/test_cuda_graphs.py ($(date -u +%T))"
    timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda_graphs.py 2>&1 | tee "$OUT/tests.log" \
        || { echo "== tests exited with $?"; status=1; }
    # (a) minispan, (b) transformers padded to 384, (c) transformers on (a)'s batches; dev prediction speed.
    bench 150 gpu_train bench/gpu_train.py --configs a,b,c --data "$SHARED/squad2-dev-half.json" \
        --vocab "$SHARED/minilm-bf16" --json "$OUT/gpu_train.json"
    # (a) against (a) with each encoder layer torch.compiled, in one process; warm-up includes the compile.
    bench 210 gpu_train_compile bench/gpu_train.py --configs a,a-compile --predict-copies 0 \
        --data "$SHARED/squad2-dev-half.json" --vocab "$SHARED/minilm-bf16" --json "$OUT/gpu_train_compile.json"
else
    # MiniLM fine-tune: train.py --compile against transformers' model, 12 articles / 4 held out; bf16
    # against fp32.
    bench 300 gpu_finetune bench/gpu_finetune.py --compile --data "$SHARED/squad2-dev-half.json" \
        --model "$SHARED/minilm-bf16" --json "$OUT/gpu_finetune.json"
fi
exit $status
