"""The training loop: epochs of length-grouped global batches, one optimizer step each, a log line and a checkpoint
every so often. train_loop is the whole loop in one screen; fine_tune sets it up (AdamW, a resumed run's state, the
speed hooks) and runs it. Only rank 0 writes files (log.jsonl, checkpoints/); every process trains.
"""
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from minispan.checkpoint import load_trainer_state, save_checkpoint
from minispan.features import batch_indices, batch_width, make_batch
from minispan.files import append_line
from minispan.speed import compile_layers, forward_backward_hook
from minispan.step import make_optimization, micro_batches, optimizer_step

logger = logging.getLogger("minispan")


@dataclass
class TrainConfig:
    """A run's settings. The defaults are SpanBERT's SQuAD 2.0 recipe; train.py's flags override them."""
    model: str | None = "spanbert-base-cased"  # a model directory or a SpanBERT name (downloaded)
    train_file: str | None = None  # None: the official train-v2.0.json (downloaded)
    dev_file: str | None = None
    output_dir: str | None = None
    epochs: int = 4
    lr: float = 2e-5
    batch_size: int = 32  # the global batch: features per optimizer step, over all processes
    per_device_batch_size: int | None = None  # micro-batches; None: the process's whole share at once
    max_seq_length: int = 512
    doc_stride: int = 128  # the step between windows
    max_query_length: int = 64
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    save_every: int = 1000  # steps between checkpoints; 0: none
    log_every: int = 50
    limit: int | None = None  # only the first N questions of each file
    device: str = "auto"
    precision: str | None = None  # None: bf16 on a GPU that has it, fp16 on older ones, fp32 on the CPU
    dropout: float | None = None  # overrides the model's dropout rates
    cuda_graphs: bool = True
    compile: bool = False
    demo: bool = False
    # What to do, not how to train: not saved with the run.
    resume: str | None = None  # continue the run in this output_dir
    overwrite: bool = False  # replace the run in output_dir
    eval_only: bool = False  # no training: predict and score the dev set with the fine-tuned model


@dataclass
class TrainingSet:
    """The training features, and the order the loop walks them in."""
    features: list
    plan: list  # every step's global batch, as feature indices (batch_plan)
    steps_per_epoch: int
    pad_token_id: int


@dataclass
class Progress:
    """Where training stands: steps done, the last gradient norm, the running sums since the last log line. All
    stay on the device: reading a device value makes the host wait for the GPU, so they are read only to log."""
    step: int
    loss_sum: torch.Tensor  # summed loss of the features seen
    seen: torch.Tensor  # features seen
    nonfinite: torch.Tensor  # steps whose gradient norm was inf or NaN
    grad_norm: torch.Tensor | None = None
    since: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, device, step=0, sums=None):
        return cls(step, *(torch.zeros(3) if sums is None else sums).to(device).clone().unbind())

    def sums(self):
        return torch.stack([self.loss_sum, self.seen, self.nonfinite])

    def add(self, loss_sum, batches, grad_norm):
        self.step += 1
        self.loss_sum += loss_sum
        self.seen += sum(len(batch["input_ids"]) for batch, weight in batches if weight)
        self.nonfinite += (~torch.isfinite(grad_norm)).float()
        self.grad_norm = grad_norm


def batch_plan(lengths, batch_size, epochs, seed):
    """Every step's global batch (feature indices), epoch after epoch: each epoch is its own length-grouped shuffle of
    all the features, drawn from seed + epoch, so a resumed run recomputes the same order and skips ahead."""
    return [batch for epoch in range(epochs)
            for batch in batch_indices(lengths, batch_size, shuffle=True, seed=seed + epoch)]


def step_batches(data, global_batch, rt, cfg):
    """This process's micro-batches of one global batch, on the device, each with its loss weight: the
    [(tensors, weight)] that forward and backward take. All padded to the global batch's width."""
    width = batch_width([len(data.features[i].input_ids) for i in global_batch], cfg.max_seq_length)
    per_device = cfg.per_device_batch_size or -(-cfg.batch_size // rt.world_size)  # ceil: 32 on 3 GPUs: 11
    return [(training_batch([data.features[i] for i in indices], width, data.pad_token_id, rt.device), weight)
            for indices, weight in micro_batches(global_batch, rt.rank, rt.world_size, per_device)]


def training_batch(features, width, pad_token_id, device):
    """A micro-batch padded to `width`, its GLOBAL batch's (batch_width), on the device: the loss's softmax covers the
    padding, so one width makes the update independent of how the global batch is split (docs/05-training.md)."""
    batch = make_batch(features, pad_token_id, training=True, length=width,
                       pin_memory=device.type == "cuda")  # page-locked: the copy below overlaps the GPU's work
    return {name: t.to(device, non_blocking=True) for name, t in batch.items()}


def train_loop(model, data, opt, rt, cfg, progress):
    """Train on data.features along data.plan, from progress.step (later than 0 in a resumed run) to the
    end. `model` is what runs forward: DistributedDataParallel's wrapper under torchrun."""
    forward_backward = forward_backward_hook(model, opt.scaler, rt, cfg.cuda_graphs)  # eager, or CUDA graphs
    steps = len(data.plan)  # every epoch's global batches, one after the other (batch_plan)
    bar = tqdm(total=steps, initial=progress.step, desc="train", disable=rt.rank != 0, dynamic_ncols=True)
    while progress.step < steps:
        batches = step_batches(data, data.plan[progress.step], rt, cfg)  # this process's micro-batches
        loss_sum = forward_backward(batches)  # forward, span loss, backward: the micro-batches' gradients add up
        grad_norm = optimizer_step(model, opt)  # clip, AdamW update, lr schedule, zero the gradients
        progress.add(loss_sum, batches, grad_norm)  # one more step; running sums, kept on the device
        bar.update(1)
        if progress.step % cfg.log_every == 0 or progress.step == steps:
            log(progress, data.steps_per_epoch, opt, rt, cfg.output_dir, bar)
        if cfg.save_every and (progress.step % cfg.save_every == 0 or progress.step == steps):
            save_checkpoint(cfg.output_dir, getattr(model, "module", model), opt, rt, progress)
    bar.close()


def log(progress, steps_per_epoch, opt, rt, output_dir, bar):
    """A logging step: sum the running sums over the processes (the one wait for the device), then rank 0
    writes a line of log.jsonl and shows the loss on the progress bar. The sums start again from zero."""
    totals = progress.sums()
    if rt.world_size > 1:
        torch.distributed.all_reduce(totals)
    loss_sum, seen, nonfinite = totals.tolist()
    record = {"step": progress.step, "epoch": round(progress.step / steps_per_epoch, 3),
              "loss": loss_sum / max(1.0, seen), "lr": opt.scheduler.get_last_lr()[0],
              "grad_norm": progress.grad_norm.item(), "features_per_s": seen / (time.perf_counter() - progress.since),
              "nonfinite_steps": int(nonfinite)}
    if rt.precision == "fp16":
        record["loss_scale"] = opt.scaler.get_scale()
    if rt.rank == 0:
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                        feat_s=f"{record['features_per_s']:.1f}")
        # A diverged run's NaN/inf is written as null: bare NaN is Python's extension, not JSON.
        line = json.dumps({key: value if not isinstance(value, float) or math.isfinite(value) else None
                           for key, value in record.items()}, allow_nan=False)
        append_line(Path(output_dir) / "log.jsonl", line)  # whole or not at all, as a full disk allows
        if nonfinite:
            logger.warning("%d step(s) since the last log had non-finite gradients%s", int(nonfinite),
                           " (skipped by the loss scaler)" if rt.precision == "fp16" else "")
    progress.loss_sum.zero_(), progress.seen.zero_(), progress.nonfinite.zero_()
    progress.since = time.perf_counter()


def fine_tune(model, data, cfg, rt, checkpoint=None):
    """Fine-tune `model` on the training set as cfg says: AdamW with its schedule, then the loop. From
    `checkpoint` (a resumed run): the optimizer, schedule and random states it saved, and its step."""
    opt = make_optimization(model, cfg, rt, total_steps=len(data.plan))
    if checkpoint is not None:  # its step, running sums and random states (dropout continues its streams)
        progress = Progress.start(rt.device, *load_trainer_state(checkpoint, opt, rt))
        if rt.rank == 0:
            logger.info("resuming from %s (step %d of %d)", checkpoint, progress.step, len(data.plan))
    else:
        progress = Progress.start(rt.device)
        torch.manual_seed(cfg.seed + rt.rank)  # each process its own dropout
    if rt.rank == 0:
        logger.info("%d steps of %d features (%d per epoch, %d warm-up)", len(data.plan),
                    min(cfg.batch_size, len(data.features)), data.steps_per_epoch,
                    math.ceil(cfg.warmup_ratio * len(data.plan)))
    if cfg.compile:
        compile_layers(model)  # speed.py: fused elementwise kernels
    if rt.world_size > 1:  # the gradients are averaged over the processes after every backward
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    train_loop(model, data, opt, rt, cfg, progress)
