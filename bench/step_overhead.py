"""The host's share of a training step: operations dispatched and CPU time, minispan next to transformers.

    python bench/step_overhead.py [--steps 30] [--batch-size 4] [--length 32] [--hidden 48]

On an H100 a SpanBERT-base step at batch 32 does ~3e12 FLOPs: about 10 ms of GPU time. In that time the
host must issue every operation of the step (a few thousand, each a Python call, a trip through torch's
dispatcher and for most a kernel launch) or the GPU waits: the fewer operations a step dispatches, the
less the host holds the GPU back. This measures that share on the CPU, where it can be isolated: a model of
SpanBERT-base's depth (12 layers, 12 heads, 28,996 pieces) but tiny width (--hidden), so the arithmetic is
small and the time is mostly per-operation overhead.

Both models run the same full step as train.py does (bf16 autocast, forward, backward, clipping, fused
AdamW, schedule, zero_grad: minispan.loop.train_loop's step, the forward_backward of
minispan.speed.forward_backward_hook, eager on the CPU, then minispan.step.optimizer_step) on the same
batch: minispan's BertForQuestionAnswering, and transformers' (attn_implementation="sdpa"). Prints, per
step, the aten operations dispatched (all, and those that compute, i.e. not views), the CPU time (the
fastest of --steps steps, as noise on a busy machine only adds; one thread), and the ratios.
"""
import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from minispan.config import BertConfig  # noqa: E402
from minispan.model import BertForQuestionAnswering  # noqa: E402
from minispan.runtime import Runtime  # noqa: E402
from minispan.speed import forward_backward_hook  # noqa: E402
from minispan.step import Optimization, linear_warmup_decay, make_optimizer, optimizer_step  # noqa: E402
# bench/gpu_train.py: importable because Python puts a script's own folder first on sys.path
from gpu_train import transformers_model  # noqa: E402

# Operations that only make a new view of existing memory: no kernel on a GPU, but still a dispatch.
VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "unsqueeze", "squeeze",
         "slice", "select", "as_strided", "alias", "split", "split_with_sizes", "unbind"}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def full_step(model, batch):
    """train.py's full step on the CPU, ready to call; warmed up (the optimizer's state, the allocator's caches)."""
    rt = Runtime(torch.device("cpu"), "bf16")
    optimizer = make_optimizer(model, 2e-5, 0.01, rt.device)
    scheduler = linear_warmup_decay(optimizer, 10, 10_000)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    opt = Optimization(optimizer, scheduler, scaler, max_grad_norm=1.0)
    forward_backward = forward_backward_hook(model, scaler, rt)  # on the CPU: step.accumulate_gradients

    def step():
        forward_backward([(batch, 1.0)])
        optimizer_step(model, opt)

    for _ in range(3):
        step()
    return step


def count_ops(step):
    with CountOps() as counted:
        step()
    return counted.ops


def make_batch(config, batch_size, length, seed):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, config.vocab_size, (batch_size, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::4, length - length // 4:] = 0  # a quarter of the rows padded, as in a grouped batch
    input_ids[attention_mask == 0] = config.pad_token_id
    token_type_ids = (torch.arange(length) >= length // 4).long().expand(batch_size, -1) * attention_mask
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                start_positions=torch.randint(0, length // 2, (batch_size,), generator=g),
                end_positions=torch.randint(length // 2, length - length // 4, (batch_size,), generator=g))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per model (the fastest is printed)")
    p.add_argument("--batch-size", type=int, default=4, help="small, so that the arithmetic is small")
    p.add_argument("--length", type=int, default=32, help="tokens per feature")
    p.add_argument("--hidden", type=int, default=48, help="hidden size (12 heads: a multiple of 12)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the host's work is one thread's; more only adds noise
    if args.hidden % 12:
        p.error(f"--hidden {args.hidden}: must be a multiple of 12 (the number of heads)")
    config = BertConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers)
    batch = make_batch(config, args.batch_size, args.length, args.seed)

    steps = {}
    for name, build in [("minispan", BertForQuestionAnswering), ("transformers", transformers_model)]:
        torch.manual_seed(args.seed)
        steps[name] = full_step(build(config), batch)
    ops = {name: count_ops(step) for name, step in steps.items()}
    fastest = dict.fromkeys(steps, float("inf"))
    for _ in range(args.steps):  # the two in turn, so that a slow spell of the machine hits both
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    results = {name: (sum(ops[name].values()), sum(n for op, n in ops[name].items() if op not in VIEWS),
                      fastest[name]) for name in steps}
    print(f"one training step, {args.layers} layers, hidden {args.hidden}, batch {args.batch_size} x "
          f"{args.length} tokens, bf16 autocast, one CPU thread, torch {torch.__version__}")
    print(f"{'':14}{'ops':>7}{'computing':>11}{'ms/step':>9}")
    for name, (ops, computing, seconds) in results.items():
        print(f"{name:14}{ops:7d}{computing:11d}{1000 * seconds:9.2f}")
    (ops_a, comp_a, s_a), (ops_b, comp_b, s_b) = results["minispan"], results["transformers"]
    print(f"transformers/minispan: ops {ops_b / ops_a:.2f}x, computing ops {comp_b / comp_a:.2f}x, "
          f"CPU time {s_b / s_a:.2f}x  (> 1: minispan dispatches less / is faster)")


if __name__ == "__main__":
    main()
