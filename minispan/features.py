"""Examples -> features: BERT's sliding windows over the context, then batches of padded tensors.

Each question is paired with one or more windows of its context, as in the original BERT / SpanBERT run_squad.py:
[CLS] question [SEP] window [SEP], `doc_stride` the step between windows (not the overlap). See docs/02-features.md.
"""
import numbers
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class Feature:
    example_index: int  # which example (question) this window belongs to
    input_ids: List[int]  # [CLS] question [SEP] window [SEP], unpadded
    token_type_ids: List[int]  # 0 up to and including the first [SEP], 1 after
    offsets: List[Optional[Tuple[int, int]]]  # character span in the context per token; None for question/special
    token_is_max_context: List[bool]  # True where this window gives the token its most context
    start_position: Optional[int] = None  # training target: answer's first token, 0 ([CLS]) when none
    end_position: Optional[int] = None  # training target: answer's last token, 0 ([CLS]) when none
    window_start: int = 0  # index of the window's first token among all the context's tokens


def window_starts(num_tokens, max_window, doc_stride):
    """Start positions of the windows over `num_tokens` context tokens (doc_stride is the step)."""
    starts = [0]
    while starts[-1] + max_window < num_tokens:
        starts.append(starts[-1] + doc_stride)
    return starts


def max_context_masks(num_tokens, starts, max_window):
    """For each window, a boolean array over its tokens: is this the window where the token has most context? A token's
    score in a window is min(tokens left of it, tokens right of it) + 0.01 * window length (as in the original BERT
    code); the highest wins, the first window on ties. For example, 10 context tokens in windows 0-5, 3-8 and 6-9:
        token 4: window 0 min(4, 1) + 0.06 = 1.06, window 1 min(1, 4) + 0.06 = 1.06: a tie, window 0 keeps it
        token 5: window 0 min(5, 0) + 0.06 = 0.06, window 1 min(2, 3) + 0.06 = 2.06: window 1
        token 7: window 1 min(4, 1) + 0.06 = 1.06, window 2 min(1, 2) + 0.04 = 1.04: window 1, the full one
    so window 0 is max-context for tokens 0-4, window 1 for 5-7, window 2 for 8-9. One pass over the windows,
    keeping each token's best score so far (memory grows with the context, not with windows x context)."""
    lengths = np.minimum(max_window, num_tokens - np.asarray(starts))
    position = np.arange(num_tokens)
    best_score = np.full(num_tokens, -np.inf)
    best_window = np.zeros(num_tokens, dtype=np.int64)
    for k, (start, length) in enumerate(zip(starts, lengths)):
        inside = position[start : start + length]
        score = np.minimum(inside - start, start + length - 1 - inside) + 0.01 * length
        better = score > best_score[start : start + length]  # strict: the first window keeps a tie, as in the original
        best_score[start : start + length][better] = score[better]
        best_window[start : start + length][better] = k
    return [best_window[start : start + length] == k for k, (start, length) in enumerate(zip(starts, lengths))]


def check_positive_ints(**sizes):
    """Sizes and counts are integers >= 1, numpy's too, bool not: one clear error, not a deep TypeError or no result."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def answer_token_span(token_starts, token_ends, answer_start, answer_end):
    """Token span [first, last] of the characters [answer_start, answer_end): the tokens holding its first and its last
    character, by binary search (tokens are in text order). Tokens (0, 3) (4, 9) (9, 14), answer [5, 12): (1, 2)."""
    first = int(np.searchsorted(token_ends, answer_start, side="right"))
    last = int(np.searchsorted(token_starts, answer_end, side="left")) - 1
    return first, last


def build_features(examples, tokenizer, *, max_seq_length=384, doc_stride=128, max_query_length=64,
                   training=False, progress=None):
    """Turn examples into features (one per window). In training, each feature gets start/end targets, and an
    example whose first answer is not at its `start` in the context gets none, as in the original (its target would
    be wrong). `progress`: a progress bar's label ("train features"), or None for no bar."""
    check_positive_ints(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)

    # About five questions share each paragraph: tokenize every distinct context once.
    context_index = {context: c for c, context in enumerate(dict.fromkeys(example.context for example in examples))}
    contexts = tokenizer.encode_batch(list(context_index))
    questions = tokenizer.encode_batch([example.question for example in examples])
    token_bounds = {}  # context index -> (start chars, end chars) of its tokens, for training targets
    windows = {}  # (context index, max window) -> (starts, max-context masks): shared by equal-length questions

    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    features = []
    for example_index, example in enumerate(tqdm(examples, desc=progress, disable=not progress)):
        c = context_index[example.context]
        context = contexts[c]
        question_ids = questions[example_index].ids[:max_query_length]
        max_window = max_seq_length - len(question_ids) - 3
        if max_window < doc_stride:
            raise ValueError(f"max_seq_length={max_seq_length} leaves {max_window} context tokens per window after the "
                             f"{len(question_ids)}-token question of example {example_index} ({example.id!r}), fewer "
                             f"than doc_stride={doc_stride}: windows would skip tokens")
        if (c, max_window) not in windows:
            starts = window_starts(len(context.ids), max_window, doc_stride)
            windows[c, max_window] = starts, max_context_masks(len(context.ids), starts, max_window)
        starts, masks = windows[c, max_window]

        answer_span = None  # (first, last) context token of the first answer, in training
        if training and not example.is_impossible:
            if not example.answers:
                raise ValueError(f"example {example_index} ({example.id!r}): answerable but has no answers")
            answer = example.answers[0]
            answer_end = answer.start + len(answer.text)
            if example.context[answer.start : answer_end] != answer.text or not answer.text.strip():
                continue  # not at its offset, or blank: nothing to learn
            if c not in token_bounds:
                token_bounds[c] = np.array([s for s, _ in context.offsets]), np.array([e for _, e in context.offsets])
            answer_span = answer_token_span(*token_bounds[c], answer.start, answer_end)
            if answer_span[0] > answer_span[1]:
                continue  # no token holds the answer's characters
        prefix = [cls] + question_ids + [sep]
        for start, is_max_context in zip(starts, masks):
            end = start + len(is_max_context)
            feature = Feature(example_index=example_index, input_ids=prefix + context.ids[start:end] + [sep],
                              token_type_ids=[0] * len(prefix) + [1] * (end - start + 1),
                              offsets=[None] * len(prefix) + context.offsets[start:end] + [None],
                              token_is_max_context=[False] * len(prefix) + is_max_context.tolist() + [False],
                              window_start=start)
            if training:
                feature.start_position = feature.end_position = 0  # [CLS]: no answer in this window
                if answer_span and start <= answer_span[0] and answer_span[1] < end:  # wholly inside
                    feature.start_position = answer_span[0] - start + len(prefix)
                    feature.end_position = answer_span[1] - start + len(prefix)
            features.append(feature)
    return features


def batch_indices(lengths, batch_size, shuffle=False, seed=0, group_by_length=True):
    """Feature indices cut into batches of features of similar length (padding costs compute); same seed, same batches.
    shuffle=False (prediction): longest first (group_by_length=False: the given order). shuffle=True (training):
    shuffled, sorted by length within mega-batches of 50 batches, cut, then the batches shuffled."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:  # sorting is stable: equal lengths keep their order
        mega = 50 * batch_size if shuffle else max(len(order), 1)  # prediction: one mega-batch, all of it
        order = [i for m in range(0, len(order), mega) for i in sorted(order[m : m + mega], key=lambda i: -lengths[i])]
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches


def batch_width(lengths, max_seq_length):
    """The width a batch is padded to: its longest feature, rounded up to a multiple of 8 (but not past max_seq_length),
    as tensor cores like, and CUDA graphs record one graph per shape: at most 64 widths for 512-token windows."""
    longest = max(lengths)
    return max(longest, min(-(-longest // 8) * 8, max_seq_length))


def make_batch(features, pad_token_id=0, training=False, pin_memory=False, length=None):
    """Pad a list of features to the longest one (or to `length`) and stack them into LongTensors [batch, length].
    With pin_memory (and CUDA present) the tensors live in page-locked memory, so that `.to(device,
    non_blocking=True)` overlaps the copy with the GPU's work."""
    if not features:
        raise ValueError("make_batch: no features")
    longest = max(len(f.input_ids) for f in features)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"make_batch: length={length} is shorter than the longest feature ({longest} tokens)")
    input_ids = np.full((len(features), length), pad_token_id, dtype=np.int64)
    token_type_ids, attention_mask = np.zeros((2, len(features), length), dtype=np.int64)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        input_ids[row, :n] = f.input_ids
        token_type_ids[row, :n] = f.token_type_ids
        attention_mask[row, :n] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
             "attention_mask": torch.from_numpy(attention_mask)}
    if training:
        if any(f.start_position is None or f.end_position is None for f in features):
            raise ValueError("make_batch(training=True): a feature has no start/end position "
                             "(built with training=False?)")
        batch["start_positions"] = torch.tensor([f.start_position for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f.end_position for f in features], dtype=torch.long)
    if pin_memory and torch.cuda.is_available():
        batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
    return batch
