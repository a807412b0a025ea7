"""One optimizer step: AdamW and its schedule, mixed precision, and the step over a global batch.

The recipe is SpanBERT's: AdamW (weight decay 0.01, none on biases and LayerNorm weights), lr warming up linearly over
the first 10% of the steps then decaying linearly to 0, gradients clipped at norm 1.0. See docs/05-training.md.
"""
import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Optimization:
    """What one optimizer step updates: the weights (optimizer), the lr (scheduler), the fp16 loss scale."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    max_grad_norm: float = 1.0  # 0: no clipping


def param_groups(model, weight_decay):
    """AdamW groups: decay the weight matrices and embeddings, not the biases and LayerNorm weights. Those are
    exactly BERT's 1-D parameters (decaying a LayerNorm gain or a bias towards 0 only hurts): we go by shape."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def make_optimizer(model, lr, weight_decay, device):
    # fused: a few kernel launches on a GPU, one pass on the CPU; with fp16 no host wait for the scaler (docs/05).
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=device.type in ("cuda", "cpu"))


def linear_warmup_decay(optimizer, warmup_steps, total_steps):
    """lr * step/warmup_steps while warming up, then linearly down to 0 at total_steps.
    With 10 steps and 2 of warm-up: factors 0, 0.5, 1, 0.875, 0.75, ..., 0.125, then 0."""

    def factor(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimization(model, recipe, rt, total_steps):
    """AdamW, its warm-up/decay schedule and (fp16 only) the loss scaler, from the recipe's settings."""
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, rt.device)
    scheduler = linear_warmup_decay(optimizer, math.ceil(recipe.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
    return Optimization(optimizer, scheduler, scaler, recipe.max_grad_norm)


def autocast(device, precision):
    """Mixed precision: matmuls in bf16/fp16, the weights (and the optimizer's update) stay fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def set_dropout(model, p):
    """--dropout: dropout lives in the nn.Dropout modules and in the attention's dropout_p (model.py)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if hasattr(module, "dropout_p"):
            module.dropout_p = p


def micro_batches(global_batch, rank, world_size, per_device_batch_size):
    """This process's share of a global batch, as [(feature indices, loss weight)].

    Process r takes features r, r+P, r+2P, ... (the batch is sorted by length, so every process gets similar lengths),
    cut into micro-batches. Each micro-batch's loss (a mean over its n features) is weighted n * P / len(global_batch):
    DDP averages the summed gradients over the P processes, so every feature counts 1 / len(global_batch), however the
    batch is split. For example 7 features, P = 2, micro-batches of 2: process 0 gets [0, 2] and [4, 6] (weights 4/7
    each), process 1 [1, 3] (4/7) and [5] (2/7). A process left with nothing (a last batch smaller than P) still runs
    one micro-batch with weight 0, so that every process joins the gradient all-reduce."""
    share = global_batch[rank::world_size]
    if not share:
        return [(global_batch[:1], 0.0)]
    chunks = [share[i:i + per_device_batch_size] for i in range(0, len(share), per_device_batch_size)]
    return [(chunk, len(chunk) * world_size / len(global_batch)) for chunk in chunks]


def accumulate_gradients(model, batches, scaler, rt):
    """Forward, loss and backward over [(tensors, weight)] (micro_batches), adding into .grad; returns the loss
    summed over the features of weight > 0, on the device (no host wait). Under DistributedDataParallel,
    no_sync() skips the all-reduce on all but the last micro-batch, whose all-reduce carries the sum of them all."""
    model.train()
    loss_sum = torch.zeros((), device=rt.device)
    for i, (batch, weight) in enumerate(batches):
        with model.no_sync() if hasattr(model, "no_sync") and i < len(batches) - 1 else contextlib.nullcontext():
            with autocast(rt.device, rt.precision):
                loss = model(**batch).loss
            scaler.scale(loss * weight).backward()
        if weight:
            loss_sum += loss.detach() * batch["input_ids"].shape[0]
    return loss_sum


def optimizer_step(model, opt):
    """Clip, update, advance the schedule, clear the gradients. Returns the gradient norm before clipping."""
    opt.scaler.unscale_(opt.optimizer)  # clip the true gradients, not the loss-scaled ones
    # With max_norm inf clip_grad_norm_ only measures.
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm or float("inf"))
    opt.scaler.step(opt.optimizer)  # fp16: skipped when a gradient overflowed (then grad_norm is inf or nan)
    opt.scaler.update()
    opt.scheduler.step()  # the schedule follows the data: a skipped fp16 step still counts
    opt.optimizer.zero_grad(set_to_none=True)
    return grad_norm
