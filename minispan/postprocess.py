"""Logits -> answers: the best span per question, its no-answer odds, and an n-best list (docs/06-postprocess.md).

A span's score is start logit + end logit; the null answer's is start_logits[0] + end_logits[0] at [CLS], the smallest
over the question's windows (the original's choice).

    null_odds = null score - best span score;   predict "" when null_odds > null_score_diff_threshold

For example, [CLS] logits 2.0 and 1.5 (null score 3.5) against a best span of 3.2: null odds 0.3 > 0, the answer is "".
"""
import numpy as np

from minispan.features import check_positive_ints
from minispan.files import write_json


def as_numpy(logits):
    if hasattr(logits, "detach"):  # a torch tensor
        logits = logits.detach().float().cpu().numpy()
    return np.asarray(logits, dtype=np.float64)


def feature_candidates(feature, start_logits, end_logits, n_best_size, max_answer_length):
    """Arrays (starts, ends, scores) of the valid spans among the n_best_size best starts x best ends of one feature:
    both ends in the context, end >= start, at most max_answer_length tokens, the start max-context in this window."""
    in_context = np.array([o is not None for o in feature.offsets])
    max_context = np.asarray(feature.token_is_max_context, dtype=bool)  # overlapping windows: score a span once
    # Best first; a stable sort keeps the lower index first among equal logits, as the original's sort does.
    top_starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    top_ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    starts, ends = top_starts[:, None], top_ends[None, :]  # (n, 1) and (1, n): a row per start, a column per end
    valid = (in_context[starts] & max_context[starts] & in_context[ends]
             & (ends >= starts) & (ends - starts + 1 <= max_answer_length))  # an n x n matrix, not a double loop
    rows, cols = np.nonzero(valid)
    s, e = top_starts[rows], top_ends[cols]
    return s, e, start_logits[s] + end_logits[e]


def softmax(scores):
    scores = np.asarray(scores, dtype=np.float64)
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def postprocess(examples, features, start_logits, end_logits, *, n_best_size=20, max_answer_length=30,
                null_score_diff_threshold=0.0):
    """Returns (predictions, null_odds, nbest), dicts keyed by question id. start_logits / end_logits: one 1-D array
    (or tensor) per feature, in `features` order, of that feature's length. nbest[qid] lists up to n_best_size
    distinct answers, best first, and the null answer "" always: after them when it ranks lower (n_best_size + 1
    entries then). Each entry has `probability` (softmax over the listed scores), `start_logit`, `end_logit`,
    and for spans the character offsets `start`, `end` in the context."""
    check_inputs(examples, features, start_logits, end_logits, n_best_size, max_answer_length)
    by_example = [[] for _ in examples]
    for i, feature in enumerate(features):
        by_example[feature.example_index].append(i)

    predictions, null_odds, nbest = {}, {}, {}
    for example, feature_ids in zip(examples, by_example):
        spans, null = [], None  # the valid spans of all its windows; the lowest-scoring [CLS] among them
        for i in feature_ids:
            s_logits, e_logits = as_numpy(start_logits[i]), as_numpy(end_logits[i])
            cls_score = s_logits[0] + e_logits[0]
            if null is None or cls_score < null["score"]:
                null = {"text": "", "score": cls_score, "start_logit": s_logits[0], "end_logit": e_logits[0]}
            candidates = feature_candidates(features[i], s_logits, e_logits, n_best_size, max_answer_length)
            for s, e, score in zip(*candidates):  # its text is an exact substring of the context
                start, end = int(features[i].offsets[s][0]), int(features[i].offsets[e][1])
                spans.append({"text": example.context[start:end], "score": score, "start_logit": s_logits[s],
                              "end_logit": e_logits[e], "start": start, "end": end})
        entries = nbest_entries(spans, null, n_best_size)
        best_span = next((entry for entry in entries if entry["text"]), None)
        # No valid span in any window (or no window): it can only be unanswerable, with odds above any real one.
        odds = 1e9 if best_span is None else float(null["score"] - best_span["score"])
        null_odds[example.id] = odds
        predictions[example.id] = best_span["text"] if best_span and odds <= null_score_diff_threshold else ""
        probabilities = softmax([entry["score"] for entry in entries]) if entries else []
        nbest[example.id] = [{"text": entry["text"], "probability": float(p),
                              "start_logit": float(entry["start_logit"]), "end_logit": float(entry["end_logit"]),
                              **({"start": entry["start"], "end": entry["end"]} if "start" in entry else {})}
                             for entry, p in zip(entries, probabilities)]
    return predictions, null_odds, nbest


def nbest_entries(spans, null, n_best_size):
    """The n-best list: candidates best first, the same text from different spans or windows listed once, with
    its best score. The null answer is always listed, even when it ranks lower."""
    best = {}  # text -> its first candidate in score order (stable: a span beats "" on a tie, as in the original)
    for candidate in sorted(spans + ([null] if null else []), key=lambda c: -c["score"]):
        best.setdefault(candidate["text"], candidate)
    entries = list(best.values())[:n_best_size]
    if null and all(entry["text"] for entry in entries):
        entries.append(null)
    return entries


def check_inputs(examples, features, start_logits, end_logits, n_best_size, max_answer_length):
    """postprocess's checks of what it is handed, so that the code above can trust it."""
    check_positive_ints(n_best_size=n_best_size, max_answer_length=max_answer_length)
    if not (len(features) == len(start_logits) == len(end_logits)):
        raise ValueError(f"postprocess: {len(features)} features but {len(start_logits)} start and "
                         f"{len(end_logits)} end logits")
    for i, feature in enumerate(features):
        if not 0 <= feature.example_index < len(examples):
            raise ValueError(f"postprocess: feature {i} belongs to example {feature.example_index}, but there are "
                             f"{len(examples)} examples (pass the examples the features were built from)")
        if len(start_logits[i]) != len(feature.input_ids) or len(end_logits[i]) != len(feature.input_ids):
            raise ValueError(f"postprocess: feature {i} has {len(feature.input_ids)} tokens but "
                             f"{len(start_logits[i])} start / {len(end_logits[i])} end logits (pass them unpadded)")


def write_predictions(output_dir, predictions, null_odds, nbest=None):
    """Write predictions.json, null_odds.json (for --na-prob-file) and nbest_predictions.json, atomically."""
    write_json(f"{output_dir}/predictions.json", predictions)
    write_json(f"{output_dir}/null_odds.json", null_odds)
    if nbest is not None:
        write_json(f"{output_dir}/nbest_predictions.json", nbest)
