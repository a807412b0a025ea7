"""A training run: its inputs read and checked, its output directory (RunDir), then loop.fine_tune and predict.evaluate.
All is checked before the first write, so a bad input overwrites nothing; rank 0 writes RUN_FILES (README.md's table).
"""
import contextlib
import dataclasses
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import torch

from minispan.checkpoint import latest_checkpoint, truncate_log
from minispan.config import BertConfig
from minispan.download import ensure_squad
from minispan.features import build_features
from minispan.files import lock_file, read_json, read_json_object, write_json
from minispan.loop import TrainConfig, TrainingSet, batch_plan, fine_tune
from minispan.metrics import gold_answers
from minispan.model import BertForQuestionAnswering
from minispan.predict import DevSet, evaluate
from minispan.runtime import TrainingError, main_process_first, start_runtime
from minispan.squad import read_squad
from minispan.step import set_dropout
from minispan.tokenizer import WordPieceTokenizer, load_tokenizer
from minispan.weights import load_model, load_state_dict_file, model_files, save_model

logger = logging.getLogger("minispan")

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample.json"  # the demo's data
# A tiny random BERT learns (nearly all of) the 45 hand-written questions: it shows every stage working.
DEMO = dict(model=None, train_file=str(SAMPLE), dev_file=str(SAMPLE), output_dir="runs/demo", epochs=40, lr=3e-3,
            batch_size=8, max_seq_length=192, doc_stride=64, max_query_length=32, warmup_ratio=0.1, dropout=0.0,
            save_every=100, log_every=20, device="cpu")
DEMO_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=256)
SAVED = [f for f in dataclasses.fields(TrainConfig) if f.name not in ("resume", "overwrite", "eval_only")]
# Files a run writes in --output-dir: another run's are never overwritten without --overwrite.
RUN_FILES = ("run_config.json", "log.jsonl", "checkpoints", "config.json", "model.safetensors", "vocab.txt",
             "tokenizer_config.json", "predictions.json", "null_odds.json", "span_predictions.json",
             "eval_results.json")
PREDICTION_FILES = RUN_FILES[-4:]  # all that --eval-only writes
MAX_PLAN = 10**7  # epochs x training features (75 epochs of SQuAD 2.0's train set): a plan of 400 MB


def train(cfg, run_dir):
    """The whole job: inputs, model, fine-tuning with checkpoints, the dev evaluation; rank 0 returns the metrics."""
    rt = start_runtime(cfg)
    run_dir.check(rt.rank)
    if rt.world_size > 1:  # the process group: waits for every process, so all have checked the output dir
        if rt.device.type == "cuda":
            torch.cuda.set_device(rt.device)
        torch.distributed.init_process_group("nccl" if rt.device.type == "cuda" else "gloo")
    train_examples = read_questions(cfg, "train", rt)
    dev_examples, dev_dataset = read_dev(cfg, rt)
    checkpoint = latest_checkpoint(run_dir.path) if cfg.resume else None
    torch.manual_seed(cfg.seed)  # the same fresh head (or demo model) in every process
    tokenizer, model, source = tokenizer_and_model(cfg, rt, train_examples, checkpoint)
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    model.to(rt.device)  # the demo model: load_model built the others there

    sizes = dict(max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    features = build_features(train_examples, tokenizer, **sizes, training=True,
                              progress="train features" if rt.rank == 0 else None)
    if not features:
        raise TrainingError(f"{cfg.train_file}: no usable training questions (no answer found in its context)")
    if cfg.epochs * len(features) > MAX_PLAN:  # the batch plan lists every feature of every epoch
        raise TrainingError(f"--epochs {cfg.epochs}: {cfg.epochs:,} x {len(features):,} training features is more "
                            f"than the {MAX_PLAN:,} a run can plan; use fewer epochs")
    # The dev windows too, now: a setting they cannot take must fail before training, not after it.
    dev = DevSet(dev_examples, build_features(dev_examples, tokenizer, **sizes, progress="dev features"),
                 dev_dataset) if rt.rank == 0 else None
    plan = batch_plan([len(f.input_ids) for f in features], cfg.batch_size, cfg.epochs, cfg.seed)
    data = TrainingSet(features, plan, len(plan) // cfg.epochs, tokenizer.pad_token_id)
    if rt.rank == 0:
        share = -(-min(cfg.batch_size, len(features)) // rt.world_size)  # a process's share of a batch, at most
        per_device = cfg.per_device_batch_size or -(-cfg.batch_size // rt.world_size)
        logger.info("%d training features from %d questions; %s on %s; %d process(es) x %d features per "
                    "micro-batch", len(features), len(train_examples), rt.precision, rt.device, rt.world_size,
                    min(per_device, share))
        if checkpoint:  # the log past the checkpoint's step is written again
            run_dir.remove()
            truncate_log(run_dir.path / "log.jsonl", int(checkpoint.name[len("step-"):]))
        else:  # a new run, or a resumed one killed before its first checkpoint: from the start
            run_dir.start(tokenizer, source, rt)

    fine_tune(model, data, cfg, rt, checkpoint)

    metrics = None
    if rt.rank == 0:
        save_model(model, run_dir.path)
        metrics = evaluate(model, dev, rt, tokenizer.pad_token_id, output_dir=run_dir.path)
    if rt.world_size > 1:
        torch.distributed.destroy_process_group()
    return metrics


def read_dev(cfg, rt):
    """The dev questions, and the dev file's data holding just those for the official evaluation, checked as it will."""
    dev_examples = read_questions(cfg, "dev", rt)
    keep = {example.id for example in dev_examples}
    data = read_json(cfg.dev_file)["data"]  # read_squad has checked the file's shape
    data = [dict(article, paragraphs=[dict(p, qas=[q for q in p["qas"] if q["id"] in keep])
                                      for p in article["paragraphs"]]) for article in data]
    try:  # read_squad accepts questions without gold answers (files made for prediction only); scoring does not
        gold_answers(data)
    except ValueError as e:
        raise TrainingError(f"{cfg.dev_file}: cannot score predictions against it: {e}") from None
    return dev_examples, data


def read_questions(cfg, split, rt):
    """The first --limit questions of --train-file / --dev-file, else of the official file (rank 0 downloads it)."""
    path = getattr(cfg, f"{split}_file")
    if path is None:
        path = main_process_first(lambda: ensure_squad(split, data_dir="data"), rt.rank == 0, rt.world_size)
    elif not Path(path).is_file():
        raise TrainingError(f"--{split}-file {path}: no such file")
    path = Path(path)
    setattr(cfg, f"{split}_file", path)
    examples = read_squad(path, training=split == "train")[:cfg.limit]
    if not examples:
        raise TrainingError(f"{path}: no questions")
    if split == "train" and all(example.is_impossible for example in examples):
        raise TrainingError(f"{path}: no answerable questions to learn spans from")
    return examples


def model_dir(name, rt):
    """--model: a directory, a SpanBERT name (fetched by rank 0 into models/), or a Hugging Face Hub id."""
    from minispan.hub import SPANBERT, ensure_spanbert, hub_model, is_hub_id

    if Path(name).is_dir():
        return Path(name)
    if name not in SPANBERT and not is_hub_id(name):
        raise TrainingError(f"--model {name}: not a directory, and not a known model (expected a directory, "
                            f"{' or '.join(SPANBERT)}, or a Hugging Face Hub id owner/name)")
    fetch = (lambda: ensure_spanbert(name, cache_dir="models")) if name in SPANBERT else (lambda: hub_model(name))
    return main_process_first(fetch, rt.rank == 0, rt.world_size)


def tokenizer_and_model(cfg, rt, train_examples, checkpoint):
    """(tokenizer, model, --model's directory or None) from a checkpoint (and the output dir), the demo or --model."""
    source = None if cfg.demo or checkpoint else model_dir(cfg.model, rt)
    if checkpoint is not None:  # its tokenizer was saved before training began
        tokenizer, model = load_tokenizer(cfg.output_dir), load_model(checkpoint, device=rt.device)
    elif cfg.demo:
        tokenizer = demo_tokenizer(train_examples)
        model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, **DEMO_MODEL))
    else:
        tokenizer, model = load_tokenizer(source), load_model(source, device=rt.device)
    if model.config.vocab_size < tokenizer.vocab_size:
        raise TrainingError(f"--model {cfg.model}: vocabulary of {tokenizer.vocab_size} tokens but the model "
                            f"has {model.config.vocab_size} embeddings")
    if cfg.max_seq_length > (positions := model.config.max_position_embeddings):
        model_name = "the demo" if cfg.demo else cfg.model
        raise TrainingError(f"--max-seq-length {cfg.max_seq_length}: the model ({model_name}) has {positions} "
                            f"positions; use --max-seq-length {positions} or less")
    return tokenizer, model, source


def evaluate_only(cfg):
    """train.py --eval-only: the dev set's metrics for the fine-tuned --model, computed as run_squad's --do_eval did."""
    rt = start_runtime(cfg)
    out = Path(cfg.output_dir)
    if not cfg.overwrite and any((out / name).exists() for name in PREDICTION_FILES):
        raise TrainingError(f"--output-dir {out} holds predictions: use --overwrite to replace them, or another one")
    dev_examples, dev_dataset = read_dev(cfg, rt)
    weights_file = model_files(model_dir(cfg.model, rt), None)[1]  # before load_model: it would add a fresh head
    if not any(name.removeprefix("bert.").startswith("qa_outputs.") for name in load_state_dict_file(weights_file)):
        raise TrainingError(f"--model {cfg.model}: no span head: fine-tune it first ({weights_file} has no qa_outputs)")
    tokenizer, model, _ = tokenizer_and_model(cfg, rt, None, None)
    sizes = dict(max_seq_length=cfg.max_seq_length, doc_stride=cfg.doc_stride, max_query_length=cfg.max_query_length)
    dev = DevSet(dev_examples, build_features(dev_examples, tokenizer, **sizes, progress="dev features"), dev_dataset)
    return evaluate(model, dev, rt, tokenizer.pad_token_id, output_dir=out)


def demo_tokenizer(examples):
    """The demo's vocabulary: the sample's characters (and ##characters), then its words, most frequent first. Not
    tokenizers' trainer: it breaks ties in hash-map order, and the demo's processes (torchrun, --resume) must agree."""
    from tokenizers import normalizers, pre_tokenizers

    normalize, split = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    texts = dict.fromkeys(text for e in examples for text in (e.context, e.question))
    words = Counter(word for text in texts for word, _ in split.pre_tokenize_str(normalize.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    tokens += [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if len(w) > 1]
    return WordPieceTokenizer({token: i for i, token in enumerate(tokens)}, lowercase=True)


class RunDir:
    """--output-dir: one run's at a time (its .lock); another run's files refused unless --overwrite or --resume."""

    def __init__(self, cfg):
        self.cfg, self.path, self.lock_file, self.resumable = cfg, Path(cfg.output_dir), None, bool(cfg.resume)

    def check(self, rank=0):
        """Before anything is written (.lock is made only by start()): no run at work there, no other run's files."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--output-dir {out}: exists and is not a directory")
        if rank == 0 and (out / ".lock").exists():
            self.lock()  # first: a run at work in it is what to report
        self.refuse_another_run()

    def refuse_another_run(self):
        out = self.path
        present = [name for name in RUN_FILES if (out / name).exists()]
        if self.cfg.resume or self.cfg.overwrite or not present:
            return
        with contextlib.suppress(ValueError, AttributeError):  # re-running the demo replaces the demo
            if self.cfg.demo and read_json_object(out / "run_config.json").get("args", {}).get("demo") is True:
                return
        raise TrainingError(f"--output-dir {out} holds another run ({', '.join(present)}); "
                            "use --resume to continue it, --overwrite to replace it, or another --output-dir")

    def lock(self):
        if self.lock_file is None:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock_file, holder = lock_file(self.path / ".lock")
            if holder:
                raise TrainingError(f"--output-dir {self.path} is in use by another run (process {holder}); wait "
                                    "for it to end, or use another --output-dir")

    def close(self):
        if self.lock_file:
            self.lock_file.close()  # lets go of the lock

    def start(self, tokenizer, source, rt):
        """A run from its start: a previous run's files removed, then run_config.json (what --resume continues)."""
        self.lock()
        self.refuse_another_run()  # again, under the lock: another run may have filled the folder since check()
        if self.cfg.resume:
            logger.warning("no checkpoint in %s: starting the run over", self.path / "checkpoints")
        self.remove(RUN_FILES[1:])
        saved = {f.name: getattr(self.cfg, f.name) for f in SAVED}
        # The files actually used, as absolute paths: a --resume from another directory reads the same ones.
        saved.update({name: str(Path(saved[name]).resolve()) for name in ("train_file", "dev_file")})
        if source is not None:
            saved["model"] = str(source.resolve())
        write_json(self.path / "run_config.json", {"args": saved, "world_size": rt.world_size,
                                                   "precision": rt.precision, "device": str(rt.device)})
        self.resumable = True
        tokenizer.save(self.path)

    def remove(self, names=()):
        """Remove `names` and a killed run's temporaries (.NAME.XXXXXXXX.tmp, checkpoints/.step-N.tmp), not a user's."""
        ours = re.compile(rf"\.({'|'.join(map(re.escape, RUN_FILES))})\.\w{{8}}\.tmp|checkpoints/\.step-\d+\.tmp")
        leftovers = [path for path in (*self.path.glob(".*.tmp"), *self.path.glob("checkpoints/.*.tmp"))
                     if ours.fullmatch(path.relative_to(self.path).as_posix())]
        for path in (*(self.path / name for name in names), *leftovers):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def resume_hint(self):
        """How to continue an interrupted run; none before its own run_config.json is written."""
        if not self.resumable:
            return ""
        world, local = (int(os.environ.get(name, "1")) for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
        nodes = f"--nnodes {world // local} " if world // local > 1 else ""
        command = f"torchrun {nodes}--nproc_per_node {local}" if world > 1 else "python"
        later = "" if latest_checkpoint(self.path) else " (no checkpoint yet: it starts again from step 0)"
        return f"; continue with: {command} train.py --resume {self.path}{later}"
