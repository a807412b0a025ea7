"""SQuAD 2.0 evaluation: the official script's numbers (evaluate-v2.0.py), reimplemented from its behaviour.

Takes the dataset, {question id: answer} and optionally {question id: no-answer probability}; gives the official keys in
the official order, equal to the last bit (every total is summed in the official order). See docs/07-scoring.md.
"""
import collections
import json
import numbers
import os
import re
import string

import numpy as np

from minispan.files import atomic_write
from minispan.squad import get_field

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)  # ASCII punctuation only, as the official script


def normalize_answer(text):
    """Lower case, drop punctuation, drop the articles a/an/the, collapse white space: in that order."""
    text = text.lower().translate(DROP_PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def compute_exact(gold, prediction):
    return int(normalize_answer(gold) == normalize_answer(prediction))


def compute_f1(gold, prediction):
    return token_f1(normalize_answer(gold).split(), normalize_answer(prediction).split())


def token_f1(gold_tokens, pred_tokens):
    """F1 over bags of tokens. If either side is empty (a no-answer), F1 is 1 when both are, else 0.
    Gold "eiffel tower", prediction "eiffel tower in paris": 2 shared, precision 2/4, recall 2/2, F1 0.667."""
    if not gold_tokens or not pred_tokens:
        return int(gold_tokens == pred_tokens)
    num_same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if num_same == 0:
        return 0
    # The official operations in the official order, so the float is the same to the last bit.
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def score_question(gold_answers, prediction):
    """(EM, F1) of one prediction: the best over the gold answers; "" is the gold answer of unanswerables."""
    # Each distinct gold is normalised once (crowd workers often agree), the prediction once.
    golds = [g for g in dict.fromkeys(map(normalize_answer, gold_answers)) if g] or [""]
    pred = normalize_answer(prediction)
    pred_tokens = pred.split()
    exact = max(int(g == pred) for g in golds)
    f1 = max(token_f1(g.split(), pred_tokens) for g in golds)
    return exact, f1


# Inputs: checked here so a bad file gives one clear line instead of a traceback deep in the scoring.

def gold_answers(dataset):
    """{question id: [gold answer texts]} in the dataset's order, from the official JSON or its `data` list. An id
    that appears twice keeps its first position and its last answers, as the official script's dicts do."""
    if isinstance(dataset, dict):
        dataset = dataset.get("data")
    if not isinstance(dataset, list):
        raise ValueError("expected a SQuAD dataset: a JSON object with a 'data' list of articles")
    gold = {}
    for a, article in enumerate(dataset):
        for p, paragraph in enumerate(get_field(article, "paragraphs", list, f"data[{a}]")):
            for q, qa in enumerate(get_field(paragraph, "qas", list, f"data[{a}].paragraphs[{p}]")):
                qid = get_field(qa, "id", str, f"data[{a}].paragraphs[{p}].qas[{q}]")
                answers = enumerate(get_field(qa, "answers", list, f"question {qid!r}"))
                gold[qid] = [get_field(ans, "text", str, f"question {qid!r}: answers[{i}]") for i, ans in answers]
    if not gold:
        raise ValueError("the dataset has no questions")
    return gold


def check_predictions(predictions):
    if not isinstance(predictions, dict):
        raise ValueError("expected a JSON object mapping question ids to answer strings")
    for qid, text in predictions.items():
        if not isinstance(text, str):
            raise ValueError(f"the prediction for {qid!r} is {json.dumps(text)[:40]}, expected a string")


def check_na_probs(na_probs, qids):
    """No-answer probabilities must be numbers, one for every question; ids not in `qids` are dropped. The file's
    order is kept: questions with equal probabilities are walked in that order, as officially."""
    if not isinstance(na_probs, dict):
        raise ValueError("expected a JSON object mapping question ids to no-answer probabilities")
    for qid, p in na_probs.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or p != p:  # p != p: NaN (isnan fails on huge ints)
            raise ValueError(f"the no-answer probability for {qid!r} is {json.dumps(p)[:40]}, expected a number")
    if missing := [qid for qid in qids if qid not in na_probs]:
        raise ValueError(f"no probability for {len(missing)} of {len(qids)} questions (first: {_first(missing)})")
    return {qid: p for qid, p in na_probs.items() if qid in qids}


# The evaluation.

def squad_v2_metrics(dataset, predictions, na_probs=None, na_prob_thresh=1.0, out_image_dir=None):
    """The official SQuAD v2 metrics, same keys in the same order with the same values; ValueError on malformed input.
    dataset: the official JSON (parsed) or its `data` list. predictions: {question id: answer text}; a question without
    one counts as answered "", ids not in the dataset are ignored. na_probs: {question id: probability of no answer}
    or None; with it come best_exact/best_f1 and their thresholds. out_image_dir (with na_probs, needs matplotlib):
    write precision-recall curves and no-answer histograms there and add the pr_*_ap keys."""
    if isinstance(na_prob_thresh, bool) or not isinstance(na_prob_thresh, numbers.Real):
        raise ValueError(f"na_prob_thresh must be a number, got {na_prob_thresh!r}")
    gold = gold_answers(dataset)
    check_predictions(predictions)
    preds = {qid: predictions.get(qid, "") for qid in gold}
    has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    probs = {qid: 0.0 for qid in gold} if na_probs is None else check_na_probs(na_probs, gold)

    exact_raw, f1_raw = {}, {}
    for qid, answers in gold.items():
        exact_raw[qid], f1_raw[qid] = score_question(answers, preds[qid])
    # Above the threshold the model says "no answer": right (1.0) exactly when the question has none.
    exact, f1 = ({qid: float(not has_ans[qid]) if probs[qid] > na_prob_thresh else s for qid, s in raw.items()}
                 for raw in (exact_raw, f1_raw))

    out = collections.OrderedDict()  # the official keys in the official order
    for prefix, qids in (("", list(gold)), ("HasAns_", [qid for qid in gold if has_ans[qid]]),
                         ("NoAns_", [qid for qid in gold if not has_ans[qid]])):
        if qids:
            out[prefix + "exact"] = 100.0 * sum(exact[qid] for qid in qids) / len(qids)
            out[prefix + "f1"] = 100.0 * sum(f1[qid] for qid in qids) / len(qids)
            out[prefix + "total"] = len(qids)
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, probs, has_ans)
        if out_image_dir:
            precision_recall_analysis(out, exact_raw, f1_raw, probs, has_ans, out_image_dir)
    return out


def find_best_thresh(preds, scores, na_probs, has_ans):
    """(best score in %, the threshold giving it), by docs/07's walk. As officially: an unanswerable question loses 1
    when its raw prediction is non-empty (" " too); ties are walked in the na_probs order, the first maximum wins."""
    order = sorted(na_probs, key=na_probs.__getitem__)  # stable: ties keep the na_probs order
    diffs = [scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0) for qid in order]
    start = sum(1 for qid in has_ans if not has_ans[qid])
    running = np.cumsum([start] + diffs, dtype=np.float64)  # sequential sums, as the official loop adds
    best = int(np.argmax(running))  # the first maximum; 0: no threshold beats "everything is no answer"
    if best == 0:
        return 100.0 * start / len(scores), 0.0
    return 100.0 * float(running[best]) / len(scores), na_probs[order[best - 1]]


def precision_recall_curve(scores, na_probs, has_ans):
    """(precisions, recalls, average precision in %), ranking answers by increasing no-answer probability. At each
    distinct probability (a threshold sits only between different ones, so ties enter together): precision = score
    of the answerable questions so far / questions so far; recall = that score / all answerable questions."""
    order = sorted(na_probs, key=na_probs.__getitem__)
    probs = np.array([na_probs[qid] for qid in order], dtype=np.float64)
    true_pos = np.cumsum([scores[qid] if has_ans[qid] else 0.0 for qid in order], dtype=np.float64)
    precision = true_pos / np.arange(1, len(order) + 1)
    recall = true_pos / float(sum(has_ans.values()))
    ends = np.append(probs[1:] != probs[:-1], True)
    precisions = np.concatenate([[1.0], precision[ends]])
    recalls = np.concatenate([[0.0], recall[ends]])
    # Sum precision x recall gained, left to right (cumsum adds sequentially, as the official loop does).
    average_precision = np.cumsum(precisions[1:] * np.diff(recalls))[-1]
    return precisions, recalls, 100.0 * float(average_precision)


def precision_recall_analysis(out, exact_raw, f1_raw, na_probs, has_ans, out_image_dir):
    """Add pr_exact_ap, pr_f1_ap, pr_oracle_ap to `out`; write their curves and the no-answer histograms."""
    figure = _figure_class()  # fails early, and clearly, without matplotlib
    os.makedirs(out_image_dir, exist_ok=True)
    oracle = {qid: float(h) for qid, h in has_ans.items()}  # a perfect answerer: recall of HasAns alone
    curves = [("pr_exact", exact_raw, "Precision-Recall curve for Exact Match score"),
              ("pr_f1", f1_raw, "Precision-Recall curve for F1 score"),
              ("pr_oracle", oracle, "Oracle Precision-Recall curve (binary task of HasAns vs. NoAns)")]
    for name, scores, title in curves if any(has_ans.values()) else []:  # no curves without an answerable question
        precisions, recalls, out[name + "_ap"] = precision_recall_curve(scores, na_probs, has_ans)
        ax = figure().subplots()
        ax.step(recalls, precisions, color="b", alpha=0.2, where="post")
        ax.fill_between(recalls, precisions, step="post", alpha=0.2, color="b")
        ax.set(xlabel="Recall", ylabel="Precision", xlim=(0.0, 1.05), ylim=(0.0, 1.05), title=title)
        _save(ax, os.path.join(out_image_dir, name + ".png"))
    for name, wanted in (("hasAns", True), ("noAns", False)):
        values = [na_probs[qid] for qid in has_ans if has_ans[qid] == wanted]
        if values:
            ax = figure().subplots()
            ax.hist(values, weights=np.full(len(values), 1.0 / len(values)), bins=20, range=(0.0, 1.0))
            ax.set(xlabel="Model probability of no-answer", ylabel="Proportion of dataset",
                   title=f"Histogram of no-answer probability: {name}")
            _save(ax, os.path.join(out_image_dir, f"na_prob_hist_{name}.png"))


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("precision-recall images need matplotlib: pip install 'minispan[plot]'") from None
    return Figure


def _save(ax, path):
    with atomic_write(path, "wb") as f:
        ax.figure.savefig(f, format="png")


def _first(ids, n=5):
    return ", ".join(map(repr, ids[:n])) + (", ..." if len(ids) > n else "")
