"""train.py's command line (see README.md): flags -> a checked TrainConfig (check_config), --resume's rules, main().
Unset flags take the recipe's values (loop.TrainConfig), the demo's (DEMO) with --demo, or the run's own with --resume.
"""
import argparse
import json
import logging
import math
import os
import sys
import typing
from pathlib import Path

import torch

from minispan.download import DownloadError
from minispan.files import read_json_object
from minispan.loop import TrainConfig
from minispan.run import DEMO, PREDICTION_FILES, RUN_FILES, SAVED, RunDir, evaluate_only, train
from minispan.runtime import TrainingError

# What a --resume may change: where and how fast it runs, never what it computes.
RESUMABLE = {"device", "precision", "compile", "cuda_graphs", "per_device_batch_size", "save_every", "log_every"}
PRECISIONS = ("bf16", "fp16", "fp32")
# --eval-only: run_squad's evaluation settings, in fp32 as it ran (its n-best 20, answers up to 30 tokens and
# null threshold 0 are postprocess's defaults), and the flags it takes.
EVAL_ONLY = dict(max_seq_length=384, doc_stride=128, max_query_length=64, precision="fp32")
EVAL_FLAGS = {"model", "dev_file", "output_dir", "limit", "device", "precision", *EVAL_ONLY}
# Each integer flag's range: past any real run's, short of what cannot be built (torch takes the seed as a
# 64-bit integer; run.MAX_PLAN bounds epochs x features); --max-seq-length is also bounded by the model's positions.
INT_FLAGS = dict(epochs=(1, 10**7), batch_size=(1, 10**6), per_device_batch_size=(1, 10**6),
                 max_seq_length=(1, 10**6), doc_stride=(1, 10**6), max_query_length=(1, 10**6), save_every=(0, 10**9),
                 log_every=(1, 10**9), limit=(1, 10**9), seed=(-2**63, 2**63 - 1))
# Each float flag's range, as its message says it; --dropout's is optional.
FLOAT_FLAGS = {"lr": ("> 0", lambda v: v > 0), "weight_decay": (">= 0", lambda v: v >= 0),
               "max_grad_norm": (">= 0", lambda v: v >= 0), "warmup_ratio": ("between 0 and 1", lambda v: 0 <= v <= 1),
               "dropout": ("in [0, 1)", lambda v: 0 <= v < 1)}
GENERIC = ("model", "checkpoint", "weights", "final", "output")  # folder names that say nothing: see --output-dir


def flag(name):
    return "--" + name.replace("_", "-")


def build_parser():
    p = argparse.ArgumentParser(
        prog="train.py", description="Fine-tune BERT/SpanBERT on SQuAD 2.0, then predict and evaluate the dev set.")
    d = TrainConfig()
    p.add_argument("--model", help=f"a model directory, spanbert-base-cased / spanbert-large-cased (downloaded), or "
                                   f"a Hugging Face Hub id owner/name (default {d.model})")
    p.add_argument("--train-file", help="SQuAD 2.0 training JSON (default data/train-v2.0.json, downloaded)")
    p.add_argument("--dev-file", help="SQuAD 2.0 dev JSON to predict and score (default data/dev-v2.0.json)")
    p.add_argument("--output-dir", help="where the run writes (default runs/ and the model's name: a Hub id's, a "
                   f"folder's, with its parent's for folders named {', '.join(GENERIC)}: .../minilm/model gives "
                   "runs/minilm-model)")
    for name, text in dict(epochs="passes over the training set", lr="peak learning rate",
                           batch_size="global batch: features per optimizer step",
                           per_device_batch_size="micro-batch per process; the rest is gradient accumulation (default "
                                                 "batch-size / processes, rounded up; need not divide it)",
                           max_seq_length="tokens per window", doc_stride="step between windows, in tokens",
                           max_query_length="question tokens kept", warmup_ratio="share of steps warming up",
                           weight_decay="AdamW weight decay", max_grad_norm="gradient clipping; 0 = off",
                           seed="seed for the head, shuffling and dropout",
                           save_every="checkpoint every N steps; 0 = never", log_every="log every N steps").items():
        default = getattr(d, name)
        p.add_argument(flag(name), type=int if name in INT_FLAGS else float,
                       help=text if default is None else f"{text} (default {default})")
    p.add_argument("--resume", metavar="OUTPUT_DIR", help="continue the run in OUTPUT_DIR from its newest checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace the run already in --output-dir")
    p.add_argument("--limit", type=int, help="use only the first N questions of each file (quick runs)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="default: bf16 where the GPU supports it, else fp16 with loss scaling; fp32 on CPU")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile each encoder layer (fused elementwise kernels): one compile of tens of seconds "
                        "that serves every batch width (one more for a 1-feature batch, one for evaluation)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None, help="on a GPU, launch "
                   "the step's kernels one by one instead of replaying them from CUDA graphs (slower; for debugging)")
    p.add_argument("--dropout", type=float, help="override both dropout rates (0 makes runs comparable)")
    p.add_argument("--demo", action="store_true", default=None,
                   help="offline, CPU, about a minute: a tiny random BERT learns data/sample.json")
    p.add_argument("--eval-only", action="store_true", default=None, help="no training: predict and score the dev "
                   "set with the fine-tuned --model, with run_squad's settings (windows 384 stepping 128, fp32)")
    return p


def parse_args(argv=None):
    """The flags, filled in from the recipe, the demo or (--resume) the run's own settings, and checked."""
    flags = {name: value for name, value in vars(build_parser().parse_args(argv)).items() if value is not None}
    resume, overwrite = flags.pop("resume", None), flags.pop("overwrite", False)
    eval_only = flags.pop("eval_only", False)
    if resume and overwrite:
        raise TrainingError("--resume continues the run in its directory, --overwrite replaces it: give one")
    if eval_only:
        extra = sorted(set(flags) - EVAL_FLAGS) + (["resume"] if resume else [])
        if extra or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TrainingError("--eval-only predicts, in one process (python, not torchrun), and trains nothing"
                                + "".join(f"; remove {flag(name)}" for name in extra))
        values = {**EVAL_ONLY, **flags}
    elif resume:
        saved = read_run_config(Path(resume))
        changed = sorted(name for name in set(flags) - RESUMABLE if not same_as_saved(name, flags[name], saved))
        if changed:
            raise TrainingError(f"--resume continues {resume} with its saved settings; remove "
                                + ", ".join(map(flag, changed)))
        values = {**saved, **{name: value for name, value in flags.items() if name in RESUMABLE}, "output_dir": resume}
    else:
        if flags.get("demo") and "model" in flags:
            raise TrainingError("--demo trains its own tiny model from scratch; it takes no --model")
        values = {**(DEMO if flags.get("demo") else {}), **flags}
    if "output_dir" not in values:
        model = Path(values.get("model", TrainConfig.model))  # a folder, or a Hub id: its name
        model = Path(os.path.abspath(model)) if model.is_dir() else model  # "." has a name too (links kept)
        generic = model.name in GENERIC and model.is_dir()
        values["output_dir"] = str(Path("runs") / (f"{model.parent.name}-{model.name}" if generic else model.name))
    cfg = TrainConfig(**values, resume=resume, overwrite=overwrite, eval_only=eval_only)
    check_config(cfg)
    return cfg


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


def check_config(cfg):
    """Every flag's own check, in one place (as BERT's validate_flags_or_throw): the run below trusts them."""
    for name, (expected, within) in FLOAT_FLAGS.items():
        value = getattr(cfg, name)
        if name != "dropout" and not math.isfinite(value):  # argparse's float() takes nan and inf
            raise TrainingError(f"{flag(name)} must be a finite number, got {value}")
        if value is not None and not within(value):
            raise TrainingError(f"{flag(name)} must be {expected}, got {value}")
    for name, (low, high) in INT_FLAGS.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise TrainingError(f"{flag(name)} must be {'> 0' if low == 1 else f'>= {low:,}'}, got {value}")
        if value is not None and value > high:
            raise TrainingError(f"{flag(name)} must be at most {high:,}, got {value}")


def read_run_config(output_dir):
    """The saved settings of the run in output_dir, each checked to be what its flag would parse to (hand-edited?)."""
    path = output_dir / "run_config.json"
    if not path.is_file():
        raise TrainingError(f"--resume {output_dir}: no run_config.json there (not a training run's output dir)")
    args = read_json_object(path).get("args")
    if not isinstance(args, dict):
        raise TrainingError(f"{path}: expected an object with the run's 'args'")
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    for field in SAVED:
        value = args.get(field.name)
        kind = next(t for t in (*typing.get_args(field.type), field.type) if t in names)  # Optional[int] -> int
        fits = isinstance(value, (int, float) if kind is float else kind) and isinstance(value, bool) == (kind is bool)
        if value is not None and not (fits and (field.name != "precision" or value in PRECISIONS)):
            expected = " or ".join(map(repr, PRECISIONS)) if field.name == "precision" else names[kind]
            raise TrainingError(f"{path}: args.{field.name} must be {expected}, got {json.dumps(value)}")
    # A setting saved as null where the flag has a default (say cuda_graphs) takes it.
    return {f.name: args[f.name] for f in SAVED if f.name in args and (args[f.name] is not None or f.default is None)}


def main(argv=None):
    run_dir = None
    threads = torch.get_num_threads()
    try:
        cfg = parse_args(argv)
        logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                            format="%(message)s")
        if cfg.demo and "OMP_NUM_THREADS" not in os.environ:  # a tiny model: more threads only wait for each other
            torch.set_num_threads(1)  # 2 busy cores: 272 s on two threads, 12 s on one (idle: 8.5 s, 10 s)
        run_dir = RunDir(cfg)
        metrics = evaluate_only(cfg) if cfg.eval_only else train(cfg, run_dir)
    except (TrainingError, ValueError, OSError, DownloadError) as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: say how to go on rather than print a traceback
        if os.environ.get("RANK", "0") == "0":  # once, under torchrun too
            print("\ninterrupted" + (run_dir.resume_hint() if run_dir else ""), file=sys.stderr)
        return 130
    finally:  # main() is also called in-process (tests): leave the process as it was
        torch.set_num_threads(threads)
        if run_dir:
            run_dir.close()
    if metrics is not None:
        out = Path(cfg.output_dir)
        written = [f"{name}/" if (out / name).is_dir() else name
                   for name in (PREDICTION_FILES if cfg.eval_only else RUN_FILES) if (out / name).exists()]
        print(json.dumps(metrics, indent=2))
        print(f"wrote {len(written)} files to {out}: {', '.join(written)}")
    return 0
