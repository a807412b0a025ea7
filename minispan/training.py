"""Fine-tune BERT/SpanBERT on SQuAD 2.0, then predict and score the dev set.

    python train.py --device cuda                        # SpanBERT-base, the official files, 4 epochs
    torchrun --nproc_per_node 8 train.py --device cuda   # the same run on 8 GPUs
    python train.py --demo                               # a tiny model on data/sample.json, CPU, < 1 minute

The recipe is SpanBERT's: lr 2e-5 with a linear warm-up over the first 10% of the steps and a linear decay
to 0, global batch 32, 4 epochs, windows of 512 tokens with a stride of 128, gradient clipping at 1.0,
weight decay 0.01 (none on biases and LayerNorm weights). The optimizer is PyTorch's AdamW, as in
transformers' Trainer; SpanBERT's own Adam had no bias correction (docs/08-reproducing-the-paper.md).

One optimizer step consumes one *global batch* of `--batch-size` features. With P processes (torchrun) and
micro-batches of `--per-device-batch-size`, every process takes every P-th feature of the global batch and
runs it in micro-batches, accumulating gradients:

    batch_size = per_device_batch_size * accumulation_steps * P      (when they divide it; they need not)

Each micro-batch's loss (a mean over its features) is weighted by `features_in_micro_batch * P /
features_in_global_batch`: the accumulated gradient, after DistributedDataParallel averages it over the P
processes, is then exactly the mean over the global batch, so the result doesn't depend on P or on the
micro-batch size, even when these do not divide the batch and micro-batches differ in size (up to float
rounding, and with --dropout 0 since every process draws its own dropout).

On one GPU in bf16 or fp32 the step's forward and backward are recorded once per micro-batch shape as CUDA
graphs and replayed (minispan/cuda_graphs.py): the same arithmetic, launched with one call instead of a
thousand. (fp16, whose loss scaler the graphs do not handle, and torchrun run the step eagerly.)

Only rank 0 writes files. Outputs in --output-dir:
    run_config.json                      the settings (what --resume continues)
    log.jsonl                            one line per logging step
    checkpoints/step-N/                  model + trainer_state.pt (optimizer, schedule, scaler, RNG, position)
    config.json model.safetensors        the fine-tuned model (load_model, pipeline, transformers)
    vocab.txt tokenizer_config.json      its tokenizer
    predictions.json null_odds.json      dev predictions (cut at null odds 0); null odds = what --na-prob-file takes
    span_predictions.json                every question's best span, before the cut
    eval_results.json                    the official SQuAD v2 metrics of span_predictions.json with the null
                                         odds at threshold 0: raw = predictions.json's, best_* over all thresholds

Reading order: the step (micro_batches, train_step), then the run (train, fit, evaluate). The command
line's plumbing (flags, defaults, --resume's checks, the output dir) is last in the file.
"""
import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from minispan.config import BertConfig
from minispan.cuda_graphs import GraphedGradients
from minispan.download import DownloadError
from minispan.features import batch_indices, build_features, make_batch
from minispan.files import atomic_write, read_json, read_json_object, write_json
from minispan.model import BertForQuestionAnswering
from minispan.squad import read_squad
from minispan.tokenizer import WordPieceTokenizer, load_tokenizer
from minispan.weights import load_model, save_model

logger = logging.getLogger("minispan")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.json"  # the demo's data

# The SpanBERT / transformers SQuAD 2.0 recipe. Flags left unset take these values (or DEMO's with --demo).
DEFAULTS = dict(
    model="spanbert-base-cased", train_file=None, dev_file=None, output_dir=None,
    epochs=4, lr=2e-5, batch_size=32, per_device_batch_size=None,
    max_seq_length=512, doc_stride=128, max_query_length=64,
    warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, seed=42,
    save_every=1000, log_every=50, limit=None, device="auto", precision=None, dropout=None, cuda_graphs=True,
)
# A tiny random BERT learns (nearly all of) the 45 hand-written questions: it shows every stage working.
DEMO = dict(DEFAULTS, model=None, train_file=str(SAMPLE), dev_file=str(SAMPLE), output_dir="runs/demo",
            epochs=40, lr=3e-3, batch_size=8, max_seq_length=192, doc_stride=64, max_query_length=32,
            warmup_ratio=0.1, dropout=0.0, save_every=100, log_every=20, device="cpu")
DEMO_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=256)

# What a --resume may change: where and how fast it runs, never what it computes.
RESUMABLE = {"device", "precision", "compile", "cuda_graphs", "per_device_batch_size", "save_every", "log_every"}

# Files a run writes in --output-dir: another run's are never overwritten without --overwrite.
RUN_FILES = ("run_config.json", "log.jsonl", "checkpoints", "config.json", "model.safetensors", "vocab.txt",
             "tokenizer_config.json", "predictions.json", "null_odds.json", "span_predictions.json",
             "eval_results.json")


class TrainingError(ValueError):
    """Bad settings or input for a training run: main() prints it as one line and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# where it runs: device, precision, processes


def resolve_device(name, local_rank=0, world_size=1):
    """--device -> torch.device. Under torchrun each process takes the GPU numbered by its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TrainingError(f"--device {name}: no CUDA GPU is available to this torch "
                                f"({torch.__version__}); use --device cpu")
        if name != "cuda" and world_size > 1:
            raise TrainingError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                                "use --device cuda")
        index = name.removeprefix("cuda").removeprefix(":")
        if index and not index.isdigit():
            raise TrainingError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
        index = int(index) if index else local_rank
        if not 0 <= index < torch.cuda.device_count():
            raise TrainingError(f"--device {name}: GPU {index} does not exist "
                                f"({torch.cuda.device_count()} visible)")
        return torch.device("cuda", index)
    raise TrainingError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(precision, device):
    """Default: bf16 on GPUs that have it (Ampere and later), fp16 + loss scaling on older ones, fp32 on CPU."""
    if precision is None:
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on the CPU)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                            "use fp16")
    return precision


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast(device, precision):
    """Mixed precision: matmuls in bf16/fp16, the weights (and the optimizer's update) stay fp32."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def init_distributed():
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) for a plain `python train.py`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world_size


def start_process_group(device):
    # NCCL talks GPU to GPU; gloo runs anywhere, so the CPU tests can check multi-process runs.
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend)


def barrier(world_size):
    if world_size > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------------------------------------
# optimizer and schedule


def param_groups(model, weight_decay):
    """AdamW groups: decay the weight matrices and embeddings; not the biases and LayerNorm weights.

    Those are exactly the 1-D parameters in BERT (decaying a LayerNorm gain towards 0, or a bias, only
    hurts), so we go by shape rather than by name.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model, lr, weight_decay, device):
    # fused: the whole update in a few kernel launches on a GPU, one pass on the CPU (where the default
    # loops over the tensors one by one). With fp16 it also takes the GradScaler's overflow flag on the
    # device: the unfused path reads it with .item() every step, which makes the CPU wait for the GPU.
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=device.type in ("cuda", "cpu"))


def linear_warmup_decay(optimizer, warmup_steps, total_steps):
    """lr * step/warmup_steps while warming up, then linearly down to 0 at total_steps."""

    def factor(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_dropout(model, p):
    """--dropout: dropout lives in the nn.Dropout modules and in the attention's dropout_p (model.py)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if hasattr(module, "dropout_p"):
            module.dropout_p = p


# ---------------------------------------------------------------------------------------------
# one optimizer step


def compile_layers(model, backend="inductor"):
    """--compile: torch.compile each encoder layer, in place.

    What it buys: between its matrix products a layer runs a dozen small elementwise operations (bias,
    dropout, residual add, LayerNorm, GELU, autocast's bf16 casts), each a kernel that reads and writes the
    whole activation; the compiler fuses each run of them into one kernel (the products and the attention
    stay cuBLAS's and cuDNN's).
    Why the layers and not the model: the 12 layers run the same code, and their parameters are inputs of
    the compiled graph rather than constants, so one layer is traced and compiled once and all 12 reuse it.
    The whole model would be traced unrolled, about 12 times the work: on an H200 it had not finished after 150 s.
    dynamic=True compiles once with the shapes as symbols for every batch width (by default torch compiles
    for the first shape, then again for each dimension that changes). A batch of a single feature still
    compiles once more (torch treats a dimension of size 1 apart), and so does evaluation (no dropout).
    In place (nn.Module.compile), so state_dict keys keep their names, and on a GPU the CUDA graphs record
    the compiled kernels as they record eager ones.
    """
    for layer in model.bert.encoder.layer:
        layer.compile(dynamic=True, backend=backend)


def micro_batches(global_batch, rank, world_size, per_device_batch_size):
    """This process's share of a global batch, as [(feature indices, loss weight)].

    Process r takes features r, r+P, r+2P, ... (the batch is sorted by length, so every process gets
    similar lengths), cut into micro-batches. A process left with nothing (a last batch smaller than P)
    still runs one micro-batch with weight 0, so that every process joins the gradient all-reduce.
    """
    share = global_batch[rank::world_size]
    if not share:
        return [(global_batch[:1], 0.0)]
    chunks = [share[i:i + per_device_batch_size] for i in range(0, len(share), per_device_batch_size)]
    return [(chunk, len(chunk) * world_size / len(global_batch)) for chunk in chunks]


def graphed_gradients(model, cuda_graphs, device, precision, world_size):
    """The CUDA graphs that replay forward and backward (minispan/cuda_graphs.py), or None to run eagerly:
    on CPU, with --no-cuda-graphs (cuda_graphs False), fp16 (the loss scaler) or torchrun
    (DistributedDataParallel's all-reduce hooks). With --compile they replay the compiled layers' kernels."""
    usable = device.type == "cuda" and precision != "fp16" and world_size == 1
    return GraphedGradients(model, precision) if usable and cuda_graphs else None


def train_step(model, batches, optimizer, scheduler, scaler, device, precision, max_grad_norm, no_sync=None,
               graphs=None):
    """Forward/backward over this process's micro-batches, then one clipped AdamW step.

    `graphs` (see graphed_gradients) replays forward and backward instead of running them eagerly.
    Returns, as tensors on the device (reading them would make the CPU wait for the GPU), the summed loss
    over this process's features and the gradient norm before clipping.
    """
    if graphs is not None:
        loss_sum = graphs(batches)
    else:
        loss_sum = accumulate_gradients(model, batches, scaler, device, precision, no_sync)
    return loss_sum, optimizer_step(model, optimizer, scheduler, scaler, max_grad_norm)


def accumulate_gradients(model, batches, scaler, device, precision, no_sync=None):
    """Backward over [(tensors, weight)] (see micro_batches), adding into the parameters' .grad.

    `no_sync` (DistributedDataParallel.no_sync) skips the gradient all-reduce on all but the last
    micro-batch: the last one's all-reduce carries the sum of them all.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    for i, (batch, weight) in enumerate(batches):
        last = i == len(batches) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with autocast(device, precision):
                loss = model(**batch).loss
            scaler.scale(loss * weight).backward()
        if weight:
            loss_sum += loss.detach() * batch["input_ids"].shape[0]
    return loss_sum


def optimizer_step(model, optimizer, scheduler, scaler, max_grad_norm):
    """Clip, update, advance the schedule, clear the gradients. Returns the gradient norm before clipping."""
    scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
    # With max_norm inf clip_grad_norm_ only measures.
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
    scaler.step(optimizer)  # fp16: skipped when a gradient overflowed (then grad_norm is inf or nan)
    scaler.update()
    scheduler.step()  # the schedule follows the data: a skipped fp16 step still counts
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def batch_plan(lengths, batch_size, epochs, seed):
    """Every step's global batch (feature indices), epoch after epoch: each epoch is its own length-grouped
    shuffle of all the features, drawn from seed + epoch, so a resumed run recomputes the same order and
    skips ahead."""
    return [batch for epoch in range(epochs)
            for batch in batch_indices(lengths, batch_size, shuffle=True, seed=seed + epoch)]


def step_batches(features, global_batch, rank, world_size, per_device_batch_size, pad_token_id, device,
                 max_seq_length, width=None):
    """This process's micro-batches of one global batch of feature indices, on the device, each with its
    loss weight: the [(tensors, weight)] train_step takes. All padded to the same width (see
    training_batch): batch_width's, or `width`."""
    width = width or batch_width([len(features[i].input_ids) for i in global_batch], max_seq_length)
    return [(training_batch([features[i] for i in indices], width, pad_token_id, device), weight)
            for indices, weight in micro_batches(global_batch, rank, world_size, per_device_batch_size)]


WIDTH_MULTIPLE = 8


def batch_width(lengths, max_seq_length):
    """The width a batch is padded to: its longest feature, rounded up to a multiple of 8 (but
    not past max_seq_length). Tensor cores like multiples of 8, and CUDA graphs record one graph per shape:
    at most max_seq_length / 8 widths (64 for 512-token windows) instead of one for every length."""
    longest = max(lengths)
    return max(longest, min(-(-longest // WIDTH_MULTIPLE) * WIDTH_MULTIPLE, max_seq_length))


def training_batch(features, length, pad_token_id, device):
    """A micro-batch padded to `length`, the width of its GLOBAL batch (batch_width), on the device.

    The span loss's softmax runs over every position, padding included (as in BERT, which padded all
    features to max_seq_length), so a feature's loss depends on how far it is padded. Padding every
    micro-batch to the same width makes the update independent of how the global batch is split over
    processes and micro-batches. Batches are grouped by length, so this costs little.
    """
    batch = make_batch(features, pad_token_id, training=True, length=length,
                       pin_memory=device.type == "cuda")  # page-locked: the copy below overlaps the GPU's work
    return to_device(batch, device)


def to_device(batch, device):
    return {name: t.to(device, non_blocking=True) for name, t in batch.items()}


# ---------------------------------------------------------------------------------------------
# checkpoints


def latest_checkpoint(output_dir):
    """The newest complete checkpoints/step-N (temporary names start with '.', so they never match)."""
    found = []
    for path in (Path(output_dir) / "checkpoints").glob("step-*"):
        step = path.name[len("step-"):]
        if step.isdigit() and (path / "trainer_state.pt").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def rng_state(device):
    """This process's torch RNG states (dropout, head init) as tensors, so torch.load(weights_only) reads them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(output_dir, step, model, optimizer, scheduler, scaler, device, world_size, rank):
    """checkpoints/step-N/: the model and trainer_state.pt, written under a temporary name then renamed,
    so that a crash never leaves a half-written checkpoint. Older checkpoints are then deleted."""
    # Every process draws its own dropout: rank 0 stores all their RNG states.
    states = [None] * world_size
    if world_size > 1:
        torch.distributed.all_gather_object(states, rng_state(device))
    else:
        states = [rng_state(device)]
    if rank != 0:
        return
    checkpoints = Path(output_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{step}"
    tmp = checkpoints / f".step-{step}.tmp"  # only rank 0 writes here: a fixed name cannot collide
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
    tmp.mkdir()  # with the usual permissions (mkdtemp's would be private)
    try:
        save_model(model, tmp)
        state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": states}
        with atomic_write(tmp / "trainer_state.pt", "wb") as f:  # flushed to disk before the rename
            torch.save(state, f)
        if final.exists():  # a resumed run re-reaching a step it had saved before being killed
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints.iterdir():  # keep only the newest: it holds everything a resume needs
        if old != final:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def load_trainer_state(checkpoint, optimizer, scheduler, scaler, device, rank, world_size):
    """Restore what save_checkpoint stored (except the model); return the step to continue from."""
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == world_size:
        rng = state["rng"][rank]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
    else:  # another process count: dropout can't continue the same streams
        if rank == 0:
            logger.warning("%s was saved by %d process(es), resumed by %d: reseeding dropout",
                           checkpoint, len(state["rng"]), world_size)
        torch.manual_seed(state["step"] * world_size + rank)
    return state["step"]


# ---------------------------------------------------------------------------------------------
# data, model and tokenizer


def read_questions(path, limit, training=False):
    """The first `limit` questions (all when None) of a SQuAD 2.0 file, as Examples."""
    examples = read_squad(path, training=training)[:limit]
    if not examples:
        raise TrainingError(f"{path}: no questions")
    return examples


def dev_dataset(path, examples):
    """The file's `data` list, as the official evaluation takes it, holding only the questions we predict.

    Checked now, before training, as the scoring at the end will check it: read_squad accepts questions
    without gold answers (files made for prediction only), the scoring does not.
    """
    from minispan.metrics import gold_answers

    keep = {example.id for example in examples}
    data = read_json(path)["data"]  # read_squad has checked the file's shape
    data = [dict(article, paragraphs=[dict(p, qas=[q for q in p["qas"] if q["id"] in keep])
                                      for p in article["paragraphs"]]) for article in data]
    try:
        gold_answers(data)
    except ValueError as e:
        raise TrainingError(f"{path}: cannot score predictions against it: {e}") from None
    return data


def squad_file(path, split, is_main, world_size):
    """--train-file / --dev-file, or the official file in data/ (downloaded by rank 0 when missing)."""
    if path is not None:
        if not Path(path).is_file():
            raise TrainingError(f"--{split}-file {path}: no such file")
        return Path(path)
    from minispan.download import ensure_squad

    return main_process_first(lambda: ensure_squad(split, data_dir="data"), is_main, world_size)


def model_dir(name, is_main, world_size):
    """--model: a directory, or a SpanBERT name (downloaded by rank 0 into models/)."""
    if Path(name).is_dir():
        return Path(name)
    from minispan.download import SPANBERT, ensure_spanbert

    if name not in SPANBERT:
        raise TrainingError(f"--model {name}: not a directory, and not a known model "
                            f"(expected a directory or one of {', '.join(SPANBERT)})")
    return main_process_first(lambda: ensure_spanbert(name, cache_dir="models"), is_main, world_size)


def main_process_first(fetch, is_main, world_size):
    """Rank 0 runs fetch() (downloading what is missing) while the others wait; then they run it on what
    is there. Each process fetches once: fetch() also validates, which reads the whole file."""
    result = fetch() if is_main else None
    barrier(world_size)
    return result if is_main else fetch()


def demo_tokenizer(examples):
    """A WordPiece vocabulary for the demo, built from the sample's own text: every character (as a word's
    first piece and as a ##continuation), then every word, most frequent first.

    Not tokenizers' WordPiece trainer: it breaks ties between equally frequent pairs in hash-map order,
    which changes from process to process, and the demo's processes (torchrun, --resume, the tests that
    compare runs) must all get the same vocabulary. Words are split exactly as the tokenizer will split
    them, by the `tokenizers` BERT normalizer and pre-tokenizer.
    """
    from tokenizers import normalizers, pre_tokenizers

    normalize, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    texts = dict.fromkeys(text for e in examples for text in (e.context, e.question))
    words = Counter(word for text in texts for word, _ in split.pre_tokenize_str(normalize.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    tokens += [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if len(w) > 1]
    return WordPieceTokenizer({token: i for i, token in enumerate(tokens)}, lowercase=True)


# ---------------------------------------------------------------------------------------------
# prediction and evaluation


@torch.no_grad()
def predict_logits(model, features, device, precision, batch_size=64, pad_token_id=0, progress=False):
    """Start and end logits for every feature, unpadded, in the features' order (as postprocess wants)."""
    model.eval()
    lengths = [len(f.input_ids) for f in features]
    # The logits stay on the device until every batch is queued: copying each batch back as it comes
    # would make the host wait for the GPU, batch after batch, instead of preparing the next one.
    outputs = []
    for indices in tqdm(batch_indices(lengths, batch_size), desc="predict", disable=not progress):
        # Rounded widths, as in training: a shape's first batch costs extra (cuDNN plans its attention).
        width = batch_width([lengths[i] for i in indices], model.config.max_position_embeddings)
        batch = make_batch([features[i] for i in indices], pad_token_id, pin_memory=device.type == "cuda",
                           length=width)
        with autocast(device, precision):
            out = model(**to_device(batch, device))
        outputs.append((indices, out.start_logits.float(), out.end_logits.float()))
    start_logits, end_logits = [None] * len(features), [None] * len(features)
    for indices, starts, ends in outputs:
        starts, ends = starts.cpu().numpy(), ends.cpu().numpy()
        for row, i in enumerate(indices):
            start_logits[i], end_logits[i] = starts[row, :lengths[i]], ends[row, :lengths[i]]
    return start_logits, end_logits


def evaluate(model, examples, features, data, device, precision, pad_token_id, output_dir=None, progress=False):
    """Predict the dev questions' features, post-process, score with the official metrics. Writes the
    results when output_dir is given. Returns the metrics (an OrderedDict with the official keys)."""
    from minispan.metrics import squad_v2_metrics
    from minispan.postprocess import postprocess, write_predictions

    start_logits, end_logits = predict_logits(model, features, device, precision, pad_token_id=pad_token_id,
                                              progress=progress)
    if not all(np.isfinite(logits).all() for logits in start_logits + end_logits):
        raise TrainingError("the model's outputs are not finite (NaN or inf): training diverged; see the loss in "
                            "log.jsonl, and try a lower --lr")
    predictions, null_odds, nbest = postprocess(examples, features, start_logits, end_logits)
    # We score every question's best span with its null odds, cut by the metrics at threshold 0. The raw
    # EM/F1 are exactly those of predictions.json (already cut at 0), and the best_* search can also try
    # thresholds above 0, where predictions.json has already answered "" (SpanBERT scored the same way).
    best_spans = {qid: next((entry["text"] for entry in entries if entry["text"]), "")
                  for qid, entries in nbest.items()}
    metrics = squad_v2_metrics(data, best_spans, na_probs=null_odds, na_prob_thresh=0.0)
    if output_dir is not None:
        write_predictions(output_dir, predictions, null_odds)
        # evaluate.py span_predictions.json DEV -n null_odds.json -t 0 gives eval_results.json again
        # (without --limit: `data` is then the whole dev file).
        write_json(Path(output_dir) / "span_predictions.json", best_spans)
        write_json(Path(output_dir) / "eval_results.json", metrics)
    return metrics


# ---------------------------------------------------------------------------------------------
# the run


def train(args):
    """The whole job: data, model, training with checkpoints, then the dev evaluation. Returns the metrics
    (None in processes other than rank 0)."""
    rank, local_rank, world_size = init_distributed()
    is_main = rank == 0
    device = resolve_device(args.device, local_rank, world_size)
    precision = resolve_precision(args.precision, device)
    # By default a process runs its whole share at once: 32 over 3 processes is 11, 11 and 10 features.
    per_device = args.per_device_batch_size or -(-args.batch_size // world_size)
    out = Path(args.output_dir)
    check_output_dir(args)
    if world_size > 1:
        start_process_group(device)  # waits for every process: all have checked the output dir

    # Everything is read and checked before the first write, so a bad input overwrites nothing.
    train_file = squad_file(args.train_file, "train", is_main, world_size)
    train_examples = read_questions(train_file, args.limit, training=True)
    if all(example.is_impossible for example in train_examples):
        raise TrainingError(f"{train_file}: no answerable questions to learn spans from")
    dev_file = squad_file(args.dev_file, "dev", is_main, world_size)
    dev_examples = read_questions(dev_file, args.limit)
    dev_data = dev_dataset(dev_file, dev_examples)

    checkpoint = latest_checkpoint(out) if args.resume else None
    torch.manual_seed(args.seed)  # the same fresh head (or demo model) in every process
    source = None if args.demo or args.resume else model_dir(args.model, is_main, world_size)
    if args.resume:
        tokenizer = load_tokenizer(out)  # saved there when the run started
    elif args.demo:
        tokenizer = demo_tokenizer(train_examples)
    else:
        tokenizer = load_tokenizer(source)
    if checkpoint is not None:
        model = load_model(checkpoint, device=device)
    elif args.demo:
        model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, **DEMO_MODEL))
    else:  # a fresh start, or a resume killed before its first checkpoint
        model = load_model(source or model_dir(args.model, is_main, world_size), device=device)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise TrainingError(f"--model {args.model}: vocabulary of {tokenizer.vocab_size} tokens but the model "
                            f"has {model.config.vocab_size} embeddings")
    positions = model.config.max_position_embeddings
    if args.max_seq_length > positions:
        raise TrainingError(f"--max-seq-length {args.max_seq_length}: the model "
                            f"({'the demo' if args.demo else args.model}) has {positions} positions; use "
                            f"--max-seq-length {positions} or less")
    if args.dropout is not None:
        set_dropout(model, args.dropout)
    model.to(device)  # the demo model: load_model built the others there

    features = build_features(train_examples, tokenizer, args.max_seq_length, args.doc_stride,
                              args.max_query_length, training=True, progress=is_main)
    if not features:
        raise TrainingError(f"{train_file}: no usable training questions (no answer found in its context)")
    # The dev windows too, now: a setting they cannot take must fail before training, not after it.
    dev_features = build_features(dev_examples, tokenizer, args.max_seq_length, args.doc_stride,
                                  args.max_query_length, progress=is_main) if is_main else None
    if is_main:
        share = -(-min(args.batch_size, len(features)) // world_size)  # a process's share of a batch, at most
        logger.info("%d training features from %d questions; %s on %s; %d process(es) x %d features per "
                    "micro-batch", len(features), len(train_examples), precision, device, world_size,
                    min(per_device, share))
    if is_main and not args.resume:
        clear_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out)  # first: run_config.json marks a run that --resume can continue
        saved_args = {name: value for name, value in vars(args).items()
                      if name not in ("resume", "overwrite", "resumable")}
        # The files actually used, as absolute paths: a --resume from another directory reads the same ones.
        saved_args.update(train_file=str(train_file.resolve()), dev_file=str(dev_file.resolve()))
        if source is not None:
            saved_args["model"] = str(source.resolve())
        write_json(out / "run_config.json", {"args": saved_args, "world_size": world_size, "precision": precision,
                                             "device": str(device)})
        args.resumable = True

    fit(model, features, tokenizer.pad_token_id, args, checkpoint, device, precision, rank, world_size, per_device)

    metrics = None
    if is_main:
        save_model(model, out)
        metrics = evaluate(model, dev_examples, dev_features, dev_data, device, precision, tokenizer.pad_token_id,
                           output_dir=out, progress=True)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return metrics


def fit(model, features, pad_token_id, args, checkpoint, device, precision, rank, world_size, per_device):
    """The training loop: args.epochs passes over `features`, from `checkpoint` when resuming."""
    is_main, out = rank == 0, Path(args.output_dir)
    plan = batch_plan([len(f.input_ids) for f in features], args.batch_size, args.epochs, args.seed)
    total_steps, steps_per_epoch = len(plan), len(plan) // args.epochs
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)

    optimizer = make_optimizer(model, args.lr, args.weight_decay, device)
    scheduler = linear_warmup_decay(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = 0
    if checkpoint is not None:
        step = load_trainer_state(checkpoint, optimizer, scheduler, scaler, device, rank, world_size)
        if is_main:
            logger.info("resuming from %s (step %d of %d)", checkpoint, step, total_steps)
    else:
        if args.resume and is_main:
            logger.warning("no checkpoint in %s: starting the run over", out / "checkpoints")
        torch.manual_seed(args.seed + rank)  # each process its own dropout
    if args.resume and is_main:
        truncate_log(out / "log.jsonl", step)
    if is_main:
        logger.info("%d steps of %d features (%d per epoch, %d warm-up)", total_steps,
                    min(args.batch_size, len(features)), steps_per_epoch, warmup_steps)

    if args.compile:
        compile_layers(model)
    trained, ddp = model, None  # `trained` is what gets called; `model` what gets saved
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    graphs = graphed_gradients(model, args.cuda_graphs, device, precision, world_size)
    if graphs is not None and is_main:
        logger.info("replaying forward and backward from CUDA graphs (one per batch shape; --no-cuda-graphs: off)")

    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not is_main, dynamic_ncols=True)
    # Running sums stay on the device; they are read (a host sync) only at logging steps.
    loss_sum, seen, nonfinite = (torch.zeros((), device=device) for _ in range(3))
    since = time.perf_counter()
    while step < total_steps:
        batches = step_batches(features, plan[step], rank, world_size, per_device, pad_token_id, device,
                               args.max_seq_length)
        step_loss, grad_norm = train_step(trained, batches, optimizer, scheduler, scaler, device, precision,
                                          args.max_grad_norm, no_sync=ddp.no_sync if ddp is not None else None,
                                          graphs=graphs)
        loss_sum += step_loss
        seen += sum(len(batch["input_ids"]) for batch, weight in batches if weight)
        nonfinite += (~torch.isfinite(grad_norm)).float()
        step += 1
        bar.update(1)

        if step % args.log_every == 0 or step == total_steps:
            totals = torch.stack([loss_sum, seen, nonfinite])
            if world_size > 1:
                torch.distributed.all_reduce(totals)
            total_loss, total_seen, total_nonfinite = totals.tolist()
            record = {"step": step, "epoch": round(step / steps_per_epoch, 3),
                      "loss": total_loss / max(1.0, total_seen), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": grad_norm.item(), "features_per_s": total_seen / (time.perf_counter() - since),
                      "nonfinite_steps": int(total_nonfinite)}
            if precision == "fp16":
                record["loss_scale"] = scaler.get_scale()
            if is_main:
                log(record, out / "log.jsonl", bar, precision)
            loss_sum.zero_(), seen.zero_(), nonfinite.zero_()
            since = time.perf_counter()
        if args.save_every and (step % args.save_every == 0 or step == total_steps):
            save_checkpoint(out, step, model, optimizer, scheduler, scaler, device, world_size, rank)
    bar.close()


def truncate_log(log_file, step):
    """Keep only log.jsonl's lines up to `step`, where a resumed run continues: the killed run may have
    logged steps after its last checkpoint, which the resumed run logs again."""
    if not log_file.is_file():
        return
    kept = []
    for line in log_file.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            pass
    with atomic_write(log_file) as f:
        f.writelines(kept)


def log(record, log_file, bar, precision):
    """One logging step: the progress bar, a line of log.jsonl, a warning for non-finite gradients."""
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", feat_s=f"{record['features_per_s']:.1f}")
    with open(log_file, "a", encoding="utf-8") as f:
        # A diverged run's NaN/inf is written as null: bare NaN is Python's extension, not JSON.
        f.write(json.dumps({key: value if not isinstance(value, float) or math.isfinite(value) else None
                            for key, value in record.items()}, allow_nan=False) + "\n")
    if record["nonfinite_steps"]:
        logger.warning("%d step(s) since the last log had non-finite gradients%s", record["nonfinite_steps"],
                       " (skipped by the loss scaler)" if precision == "fp16" else "")


# ---------------------------------------------------------------------------------------------
# the command line: flags, defaults, --resume, the output dir


def build_parser():
    p = argparse.ArgumentParser(
        prog="train.py", description="Fine-tune BERT/SpanBERT on SQuAD 2.0, then predict and evaluate the dev set.")
    d = DEFAULTS
    p.add_argument("--model", help=f"a model directory, or spanbert-base-cased / spanbert-large-cased "
                                   f"(downloaded) (default {d['model']})")
    p.add_argument("--train-file", help="SQuAD 2.0 training JSON (default data/train-v2.0.json, downloaded)")
    p.add_argument("--dev-file", help="SQuAD 2.0 dev JSON to predict and score (default data/dev-v2.0.json)")
    p.add_argument("--output-dir", help="where the run writes (default runs/<model name>)")
    p.add_argument("--epochs", type=int, help=f"passes over the training set (default {d['epochs']})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d['lr']})")
    p.add_argument("--batch-size", type=int,
                   help=f"global batch: features per optimizer step (default {d['batch_size']})")
    p.add_argument("--per-device-batch-size", type=int,
                   help="micro-batch per process; the rest is gradient accumulation (default batch-size / "
                        "processes, rounded up; need not divide it)")
    p.add_argument("--max-seq-length", type=int, help=f"tokens per window (default {d['max_seq_length']})")
    p.add_argument("--doc-stride", type=int, help=f"step between windows, in tokens (default {d['doc_stride']})")
    p.add_argument("--max-query-length", type=int, help=f"question tokens kept (default {d['max_query_length']})")
    p.add_argument("--warmup-ratio", type=float, help=f"share of steps warming up (default {d['warmup_ratio']})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {d['weight_decay']})")
    p.add_argument("--max-grad-norm", type=float, help=f"gradient clipping; 0 = off (default {d['max_grad_norm']})")
    p.add_argument("--seed", type=int, help=f"seed for the head, shuffling and dropout (default {d['seed']})")
    p.add_argument("--save-every", type=int, help=f"checkpoint every N steps; 0 = never (default {d['save_every']})")
    p.add_argument("--log-every", type=int, help=f"log every N steps (default {d['log_every']})")
    p.add_argument("--resume", metavar="OUTPUT_DIR", help="continue the run in OUTPUT_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    p.add_argument("--limit", type=int, help="use only the first N questions of each file (quick runs)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto: cuda when available)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"),
                   help="default: bf16 where the GPU supports it, else fp16 with loss scaling; fp32 on CPU")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile each encoder layer (fused elementwise kernels): one compile of tens of "
                        "seconds that serves every batch width (one more for a 1-feature batch, one for "
                        "evaluation)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="on a GPU, launch the step's kernels one by one instead of replaying them from CUDA "
                        "graphs (slower; for debugging)")
    p.add_argument("--dropout", type=float, help="override both dropout rates (0 makes runs comparable)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="offline, CPU, < 1 minute: a tiny random BERT learns data/sample.json")
    return p


def parse_args(argv=None):
    """Parse the flags and fill in the defaults: the recipe's, the demo's, or (--resume) the run's own."""
    args = build_parser().parse_args(argv)
    given = {name for name, value in vars(args).items() if value is not None and name not in ("resume", "overwrite")}
    if args.resume and args.overwrite:
        raise TrainingError("--resume continues the run in its directory, --overwrite replaces it: give one")
    if args.resume:
        saved = read_run_config(Path(args.resume))
        changed = sorted(name for name in given - RESUMABLE if not same_as_saved(name, getattr(args, name), saved))
        if changed:
            raise TrainingError(f"--resume continues {args.resume} with its saved settings; remove "
                                + ", ".join("--" + name.replace("_", "-") for name in changed))
        for name, value in saved.items():
            if name not in RESUMABLE or getattr(args, name, None) is None:
                setattr(args, name, value)
        args.output_dir = args.resume
    else:
        if args.demo and args.model is not None:
            raise TrainingError("--demo trains its own tiny model from scratch; it takes no --model")
        for name, value in (DEMO if args.demo else DEFAULTS).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if args.output_dir is None:
            args.output_dir = str(Path("runs") / Path(args.model).name)
    args.demo, args.compile = bool(args.demo), bool(args.compile)
    args.resumable = bool(args.resume)  # and, for a new run, once its run_config.json is written
    args.cuda_graphs = args.cuda_graphs is not False  # a run saved before the flag existed used them
    check_args(args)
    return args


def same_as_saved(name, given, saved):
    """Is a flag repeated with --resume the run's own? The files it used are saved as absolute paths."""
    value = saved.get(name)
    if given == value:
        return True
    if name in ("train_file", "dev_file", "model") and isinstance(value, str):
        if Path(given).exists():
            return str(Path(given).resolve()) == value
        return name == "model" and Path(value).name == given  # a SpanBERT name: the folder it downloaded to
    return False


def check_args(args):
    for name in ("lr", "weight_decay", "max_grad_norm", "warmup_ratio"):  # argparse's float() takes nan and inf
        if not math.isfinite(getattr(args, name)):
            raise TrainingError(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}")
    positive = ("epochs", "lr", "batch_size", "max_seq_length", "doc_stride", "max_query_length", "log_every")
    for name in positive:
        if not getattr(args, name) > 0:
            raise TrainingError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("weight_decay", "max_grad_norm", "save_every"):
        if getattr(args, name) < 0:
            raise TrainingError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.warmup_ratio <= 1:
        raise TrainingError(f"--warmup-ratio must be between 0 and 1, got {args.warmup_ratio}")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise TrainingError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.limit is not None and args.limit < 1:
        raise TrainingError(f"--limit must be >= 1, got {args.limit}")
    if args.per_device_batch_size is not None and args.per_device_batch_size < 1:
        raise TrainingError(f"--per-device-batch-size must be >= 1, got {args.per_device_batch_size}")


def read_run_config(output_dir):
    path = output_dir / "run_config.json"
    if not path.is_file():
        raise TrainingError(f"--resume {output_dir}: no run_config.json there (not a training run's output dir)")
    saved = read_json_object(path)
    if not isinstance(saved.get("args"), dict):
        raise TrainingError(f"{path}: expected an object with the run's 'args'")
    # A hand-edited file: each setting must still be what its flag would parse to.
    for action in build_parser()._actions:
        value = saved["args"].get(action.dest)
        kind = action.type or (bool if action.nargs == 0 else str)  # nargs 0: a store_true/false switch
        if value is None or action.dest == "help":
            continue
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind) \
                or (action.choices and value not in action.choices):
            expected = " or ".join(map(repr, action.choices)) if action.choices else \
                {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
            raise TrainingError(f"{path}: args.{action.dest} must be {expected}, got {json.dumps(value)}")
    return saved["args"]


def check_output_dir(args):
    """Refuse to write over another run (its model, its results) unless --overwrite or --resume."""
    out = Path(args.output_dir)
    if args.resume or not out.exists():
        return
    if not out.is_dir():
        raise TrainingError(f"--output-dir {out}: exists and is not a directory")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present or args.overwrite:
        return
    if args.demo and (out / "run_config.json").is_file():  # re-running the demo replaces the demo
        try:
            if read_run_config(out).get("demo"):
                return
        except (TrainingError, ValueError):
            pass
    raise TrainingError(f"--output-dir {out} holds another run ({', '.join(present)}); "
                        "use --resume to continue it, --overwrite to replace it, or another --output-dir")


def clear_output_dir(out):
    """Remove a previous run's files (only the names a run writes), so nothing stale is mistaken for ours."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_hint(args):
    """How to continue an interrupted run, once its run_config.json is written (before that, one found in the
    output dir belongs to the run that --overwrite is replacing)."""
    if args is None or not args.resumable:
        return ""
    out = Path(args.output_dir)
    world, local = (int(os.environ.get(name, "1")) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
    nodes = f"--nnodes {world // local} " if world // local > 1 else ""
    command = f"torchrun {nodes}--nproc_per_node {local}" if world > 1 else "python"
    later = "" if latest_checkpoint(out) else " (no checkpoint yet: it starts again from step 0)"
    return f"; continue with: {command} train.py --resume {out}{later}"


def main(argv=None):
    args = None
    try:
        args = parse_args(argv)
        logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                            format="%(message)s")
        metrics = train(args)
    except (TrainingError, ValueError, OSError, DownloadError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: say how to go on rather than print a traceback
        if os.environ.get("RANK", "0") == "0":  # once, under torchrun too
            print("\ninterrupted" + resume_hint(args), file=sys.stderr)
        return 130
    if metrics is not None:
        print(json.dumps(metrics, indent=2))
        print(f"wrote the model, predictions.json, null_odds.json and eval_results.json to {args.output_dir}")
    return 0
