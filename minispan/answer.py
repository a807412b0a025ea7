"""Question answering on raw text: minispan.pipeline, and its command line `python -m minispan.answer`.

    qa = minispan.pipeline("question-answering", model="mrm8488/spanbert-finetuned-squadv2")  # or a run's directory
    qa({"question": "Who wrote it?", "context": "It was written by Ann."})
    # {'score': 0.93, 'start': 18, 'end': 21, 'answer': 'Ann'}

Answers, offsets and scores follow the transformers 4.x question-answering pipeline, so users of the SpanBERT card get
the same output; how that differs from the evaluation path (postprocess.py): docs/06-postprocess.md.
"""
import argparse
import dataclasses
import json
import re
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from minispan.download import DownloadError
from minispan.features import build_features, check_positive_ints, make_batch
from minispan.files import read_json_object
from minispan.postprocess import softmax
from minispan.runtime import resolve_device
from minispan.squad import Example
from minispan.tokenizer import load_tokenizer
from minispan.weights import load_model

# A call's options and defaults, transformers 4.46's (batch_size: windows per forward pass; 1 there). None: see __call__
OPTIONS = dict(top_k=1, handle_impossible_answer=False, max_answer_len=15, max_seq_len=None, doc_stride=None,
               max_question_len=None, align_to_words=True, batch_size=32)


class QuestionAnsweringPipeline:
    def __init__(self, model, tokenizer, device=None, **options):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device if device is None else torch.device(device)
        self.options = check_arguments(options, call=True)  # every call's defaults, as pipeline(..., top_k=3) sets

    def __call__(self, inputs=None, *, question=None, context=None, **options):
        """qa({"question": q, "context": c}) or qa(question=q, context=c) -> {"score", "start", "end", "answer"}; a
        list of questions (or dicts) gives a list. With top_k > 1: up to top_k answers, best first (one dict when only
        one exists, as in transformers). The question is truncated only with max_question_len, as in 4.x (fast)."""
        examples, is_list = parse_inputs(inputs, question, context)
        o = {**OPTIONS, **self.options, **check_arguments(options, call=True)}
        features = self.windows(examples, o)
        start_logits, end_logits = self.logits(features, o["batch_size"])

        answers, null_scores = [[] for _ in examples], [None] * len(examples)
        word_ids = [self.tokenizer.encode(e.context).word_ids if o["align_to_words"] else None for e in examples]
        for feature, s, e in zip(features, start_logits, end_logits):
            i = feature.example_index
            spans, null = window_answers(feature, s, e, o["top_k"], o["max_answer_len"], word_ids[i])
            answers[i] += [{"score": score, "start": start, "end": end, "answer": examples[i].context[start:end]}
                           for score, start, end in spans]
            null_scores[i] = null if null_scores[i] is None else min(null_scores[i], null)
        results = []
        for example_answers, null in zip(answers, null_scores):
            if o["handle_impossible_answer"]:
                example_answers.append({"score": null, "start": 0, "end": 0, "answer": ""})
            example_answers = sorted(example_answers, key=lambda a: -a["score"])[:o["top_k"]]
            results.append(example_answers[0] if len(example_answers) == 1 else example_answers)
        return results if is_list else results[0]

    def windows(self, examples, o):
        """The features of every example's windows, as the 4.x pipeline cuts them (options `o` checked)."""
        positions = self.model.config.max_position_embeddings
        max_seq_len = o["max_seq_len"] or min(384, self.tokenizer.model_max_length or 384, positions)
        doc_stride = min(max_seq_len // 2, 128) if o["doc_stride"] is None else o["doc_stride"]
        if max_seq_len > positions:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds the model's {positions} positions")
        features = []
        for i, example in enumerate(examples):
            question_length = len(self.tokenizer.encode(example.question).ids)  # not truncated unless asked, as in 4.x
            question_length = min(question_length, o["max_question_len"] or question_length)
            window = max_seq_len - question_length - 3  # room for context tokens next to [CLS] q [SEP] ... [SEP]
            if window <= doc_stride:
                raise ValueError(f"max_seq_len={max_seq_len} leaves {window} context tokens, not more than the "
                                 f"doc_stride={doc_stride} overlap: use a larger max_seq_len or a smaller doc_stride")
            # build_features' doc_stride is the step between windows: here, the window minus the overlap.
            example_features = build_features([example], self.tokenizer, max_seq_length=max_seq_len,
                                              doc_stride=window - doc_stride, max_query_length=question_length)
            if all(offset is None for offset in example_features[0].offsets):
                raise ValueError(f"input {i}: context has no tokens (only control characters?)")
            features += [dataclasses.replace(feature, example_index=i) for feature in example_features]
        return features

    @torch.inference_mode()
    def logits(self, features, batch_size):
        """Unpadded float64 numpy start and end logits per window. Windows of equal length share a batch, so there
        is no padding at all: a question's windows are all full but the last."""
        start_logits, end_logits = [None] * len(features), [None] * len(features)
        by_length = defaultdict(list)
        for i, feature in enumerate(features):
            by_length[len(feature.input_ids)].append(i)
        for indices in by_length.values():
            for b in range(0, len(indices), batch_size):
                chunk = indices[b : b + batch_size]
                batch = make_batch([features[i] for i in chunk], self.tokenizer.pad_token_id)
                output = self.model(**{name: t.to(self.device) for name, t in batch.items()})
                for row, i in enumerate(chunk):
                    start_logits[i] = output.start_logits[row].double().cpu().numpy()
                    end_logits[i] = output.end_logits[row].double().cpu().numpy()
        if not all(np.isfinite(logits).all() for logits in start_logits + end_logits):  # else [] or a NaN score
            raise ValueError("the model's outputs are not finite (NaN or inf): its weights are, or overflow its dtype")
        return start_logits, end_logits


def window_probabilities(feature, start_logits, end_logits):
    """(start, end) probabilities of one window's tokens, (L,) each: question and special tokens masked out."""
    allowed = np.array([o is not None for o in feature.offsets])
    allowed[0] = True  # [CLS]: the null answer
    return tuple(softmax(np.where(allowed, logits, -np.inf)) for logits in (start_logits, end_logits))


def window_answers(feature, start_logits, end_logits, top_k, max_answer_len, word_ids=None):
    """The top_k spans of one window as (score, char start, char end), best first, and its null score."""
    p_start, p_end = window_probabilities(feature, start_logits, end_logits)
    null = float(p_start[0] * p_end[0])

    # Every span of context tokens at once: an outer product, banded to end >= start and <= max_answer_len tokens.
    context = np.flatnonzero([o is not None for o in feature.offsets])
    scores = np.triu(np.tril(np.outer(p_start[context], p_end[context]), max_answer_len - 1))
    flat = scores.ravel()
    k = min(top_k, flat.size)
    best = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    best = best[np.argsort(-flat[best], kind="stable")]
    spans = []
    for index in best:
        i, j = np.unravel_index(index, scores.shape)
        if not i <= j < i + max_answer_len:  # only when fewer than top_k spans exist: a zero outside the band
            continue
        first, last = context[i], context[j]
        start, end = feature.offsets[first][0], feature.offsets[last][1]
        if word_ids is not None:
            start, end = word_bounds(feature, first, last, word_ids)
        spans.append((float(flat[index]), int(start), int(end)))
    return spans, null


def word_bounds(feature, first, last, word_ids):
    """Grow the token span [first, last] to whole words (within this window): (char start, char end)."""
    def word(t):
        return word_ids[feature.window_start + t - context_start]

    context_start = next(t for t, o in enumerate(feature.offsets) if o is not None)
    context_end = context_start + sum(o is not None for o in feature.offsets)  # one past the window's last token
    while first > context_start and word(first - 1) == word(first):
        first -= 1
    while last + 1 < context_end and word(last + 1) == word(last):
        last += 1
    return feature.offsets[first][0], feature.offsets[last][1]


def parse_inputs(inputs, question, context):
    """Normalise the accepted call forms to (list of Examples, whether a list was given)."""
    if inputs is not None:
        if question is not None or context is not None:
            raise ValueError("pass either a dict (or list of dicts) or question=/context=, not both")
        is_list = isinstance(inputs, (list, tuple))
        items = inputs if is_list else [inputs]
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f"input {n}: expected a dict with keys 'question' and 'context', "
                                 f"got {type(item).__name__}")
            if missing := [key for key in ("question", "context") if key not in item]:
                raise ValueError(f"input {n}: the dict has no {' and no '.join(map(repr, missing))}")
        pairs = [(item["question"], item["context"]) for item in items]
    elif question is not None and context is not None:
        is_list = isinstance(question, (list, tuple))
        if is_list and isinstance(context, (list, tuple)):
            if len(question) != len(context):
                raise ValueError(f"{len(question)} questions but {len(context)} contexts")
            pairs = list(zip(question, context))
        else:  # one question, or many about one context
            pairs = [(q, context) for q in question] if is_list else [(question, context)]
    else:
        raise ValueError("expected qa({'question': ..., 'context': ...}) or qa(question=..., context=...)")
    if not pairs:
        raise ValueError("no questions given")
    for n, (q, c) in enumerate(pairs):
        for name, value in [("question", q), ("context", c)]:
            if not isinstance(value, str):
                raise ValueError(f"input {n}: {name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"input {n}: {name} is empty")
            if bad := re.search("[\ud800-\udfff]", value):  # as bytes that are not UTF-8 arrive from a command line
                raise ValueError(f"input {n}: {name} is not valid text: a lone surrogate at character {bad.start()}")
    return [Example(id=str(n), title="", question=q, context=c) for n, (q, c) in enumerate(pairs)], is_list


def pipeline(task=None, model=None, *, tokenizer=None, revision=None, token=None, **arguments):
    """pipeline(path), or the card's pipeline("question-answering", model=..., tokenizer=...): a directory or a
    Hub id (owner/name: fetched at `revision`, with `token` or HF_TOKEN). The other arguments are transformers
    4.46's (check_arguments): device, torch_dtype, and the defaults of every call (top_k=3, batch_size=8, ...)."""
    from minispan.hub import resolve_model

    if model is None and task != "question-answering":  # pipeline(path)
        task, model = None, task
    if task not in (None, "question-answering") or model is None:
        raise ValueError(f"pipeline: task {task!r}, model {model!r}: minispan answers questions "
                         "('question-answering') with the model you name (it has no default one)")
    arguments = check_arguments(arguments, call=False)  # all of them, before anything loads
    device, dtype = arguments.pop("device", None), arguments.pop("torch_dtype", None)
    model_dir = resolve_model(model, revision, token)
    vocab_dir = model_dir if tokenizer in (None, model) else resolve_model(tokenizer, revision, token, weights=False)
    tokenizer = load_tokenizer(vocab_dir)  # before the weights: fails fast
    if dtype == "auto":  # 4.x: the checkpoint's own
        dtype = getattr(torch, read_json_object(model_dir / "config.json").get("torch_dtype") or "float32")
    model = load_model(model_dir, device=device, dtype=dtype)
    if tokenizer.vocab_size > model.config.vocab_size:  # else an IndexError at the first question with such a token
        raise ValueError(f"{vocab_dir}: a vocabulary of {tokenizer.vocab_size:,} tokens, more than the "
                         f"{model.config.vocab_size:,} embeddings of the model in {model_dir}")
    return QuestionAnsweringPipeline(model, tokenizer, device, **arguments)


def check_arguments(arguments, call):
    """Every check of the pipeline's arguments, for pipeline(...) (call=False) and for a call: transformers 4.46's
    (and topk, its old top_k); others are one line naming them. Returns those given (None: the default), checked."""
    arguments = {name: value for name, value in arguments.items() if value is not None}
    if "topk" in arguments:
        warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning)  # 4.46's words
        arguments.setdefault("top_k", arguments.pop("topk"))
    known = [*OPTIONS] if call else [*OPTIONS, "device", "torch_dtype"]
    if unknown := [name for name in arguments if name not in known]:
        raise ValueError(f"{'qa' if call else 'pipeline'}: unknown argument {unknown[0]!r} (minispan takes "
                         f"{'' if call else 'model, tokenizer, revision, token, '}{', '.join(known)})")
    check_positive_ints(**{name: arguments[name] for name in ("top_k", "max_answer_len", "max_seq_len",
                                                              "max_question_len", "batch_size") if name in arguments})
    stride, device, dtype = arguments.get("doc_stride", 0), arguments.get("device"), arguments.get("torch_dtype")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
        raise ValueError(f"doc_stride must be a non-negative integer, got {stride!r}")
    if device is not None:  # -1: the CPU; N: the GPU cuda:N; "auto": train.py's rule, the GPU if there is one
        arguments["device"] = resolve_device(str(device) if not isinstance(device, int) else "cpu" if device < 0
                                             else f"cuda:{device}")
    if isinstance(dtype, str) and dtype != "auto":  # "bfloat16" -> torch.bfloat16 (load_model checks it)
        arguments["torch_dtype"] = getattr(torch, dtype, dtype)
    return arguments


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minispan.answer",
                                     description="Answer one question and print the answer as JSON.")
    parser.add_argument("--model", required=True, help="a model directory, or a Hugging Face Hub id (owner/name)")
    parser.add_argument("--question", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to find the answer in")
    source.add_argument("--context-file", help="read the context from this UTF-8 text file")
    parser.add_argument("--top-k", type=int, default=1, help="how many answers (default 1)")
    parser.add_argument("--handle-impossible-answer", action="store_true", help='allow the answer "" (no answer)')
    parser.add_argument("--max-answer-len", type=int, default=15, help="longest answer in tokens (default 15)")
    parser.add_argument("--max-seq-len", type=int, help="tokens per window (default 384, or the model's positions)")
    parser.add_argument("--doc-stride", type=int, help="tokens shared by neighbouring windows (default the smaller "
                        "of 128 and half of --max-seq-len)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--explain", metavar="PAGE.html", help="also write an HTML page explaining the answer")
    args = parser.parse_args(argv)

    try:
        try:
            context = args.context if args.context_file is None else Path(args.context_file).read_text("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.context_file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        qa = pipeline(args.model, device=args.device and resolve_device(args.device))
        options = dict(handle_impossible_answer=args.handle_impossible_answer, max_answer_len=args.max_answer_len,
                       max_seq_len=args.max_seq_len, doc_stride=args.doc_stride)
        result = qa(question=args.question, context=context, top_k=args.top_k, **options)
        if args.explain:
            from minispan.explain import write_explanation

            write_explanation(args.explain, qa, args.question, context, top_k=max(5, args.top_k), **options)
        print(json.dumps(result, ensure_ascii=False, indent=2, allow_nan=False))  # JSON: never a bare NaN
    except (OSError, ValueError, DownloadError) as e:  # missing files or Hub model, bad JSON or weights, bad input
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
