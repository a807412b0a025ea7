"""minispan.metrics against hand-computed cases and against transformers' port of the official script.

transformers 4.46.3's squad_metrics keeps the official functions (normalize_answer, compute_exact, compute_f1,
get_raw_scores, apply_no_ans_threshold, make_eval_dict, merge_eval, find_best_thresh). Its own squad_evaluate
differs from the official main (it adds best_* whenever a probability dict exists, also the default all-0.0
one, and takes has-answer from example objects), so `official_main` below composes the port's functions in the
official main's order instead. The precision-recall analysis is not in the port: it is checked by hand.
Comparisons are on json.dumps of the whole result: same keys, same order, same values to the last bit.
"""
import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from minispan.metrics import (
    compute_exact, compute_f1, find_best_thresh, normalize_answer, precision_recall_curve, squad_v2_metrics,
)

WORDS = ["the", "a", "an", "The", "An", "cat", "Cat's", "theatre", "another", "x", "naïve", "ÉCOLE", "1,000",
         "U.S.", "well-known", "—", "¿qué?", "日本", "(b)", "a.b", "", " ", "\t", "\n", "an-", "THE.", "là"]


def random_text(rng, n_max=6):
    return rng.choice(["", " "]).join(rng.choice(WORDS) for _ in range(rng.randint(0, n_max)))


# ------------------------------------------------------------------------------------------------- the rules

@pytest.mark.parametrize("text, expected", [
    ("The Cat", "cat"),                          # lower case, article dropped
    ("theatre another", "theatre another"),      # articles only as whole words
    ("a.b", "ab"),                               # punctuation goes first, then articles: "ab" is no article
    ("an-apple", "anapple"),
    ("A, an; THE!", ""),                         # nothing left
    ("  New\t\nYork  ", "new york"),             # white space collapsed
    ("1,000 km.", "1000 km"),
    ("¿Qué? — naïve", "¿qué — naïve"),           # only ASCII punctuation is dropped; accents kept
    ("ÉCOLE", "école"),
    ("l'an", "lan"),
])
def test_normalize_answer_rules(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("gold, pred, exact, f1", [
    ("Robert Stevenson", "robert stevenson.", 1, 1.0),
    ("the engineer Robert Stevenson", "Robert Stevenson", 0, 0.8),  # p=1, r=2/3 -> 0.8
    ("Garry Kasparov", "Kasparov Kasparov", 0, 0.5),                 # bag counts: one common token
    ("", "", 1, 1),                                                  # no-answer agreed
    ("", "Columbia", 0, 0),
    ("the", "", 1, 1),                                               # a gold of only an article is empty
    ("New York", "Philadelphia", 0, 0),
])
def test_exact_and_f1_hand_cases(gold, pred, exact, f1):
    assert compute_exact(gold, pred) == exact
    assert compute_f1(gold, pred) == pytest.approx(f1, abs=1e-15)


def test_empty_golds_make_the_question_unanswerable_but_has_ans_follows_the_list():
    # A gold answer that normalises to nothing is dropped; only "" then scores. But HasAns is decided by the
    # answers list being non-empty (as officially), so this question is HasAns with gold "".
    data = dataset([("q1", ["The", "."]), ("q2", ["Mainz"])])
    out = squad_v2_metrics(data, {"q1": "", "q2": "mainz"})
    assert list(out.items()) == [("exact", 100.0), ("f1", 100.0), ("total", 2),
                                 ("HasAns_exact", 100.0), ("HasAns_f1", 100.0), ("HasAns_total", 2)]


def test_keys_appear_only_when_they_apply():
    only_no_ans = dataset([("q1", []), ("q2", [])])
    out = squad_v2_metrics(only_no_ans, {"q1": "", "q2": "x"})
    assert list(out) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
    assert out["exact"] == 50.0
    out = squad_v2_metrics(only_no_ans, {"q1": "", "q2": "x"}, na_probs={"q1": 0.1, "q2": 0.9})
    assert list(out)[-4:] == ["best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"]


def test_threshold_is_strictly_greater():
    data = dataset([("q1", ["Mainz"]), ("q2", [])])
    preds = {"q1": "Mainz", "q2": "Mainz"}
    probs = {"q1": 0.5, "q2": 0.7}
    # 0.5 is not > 0.5: q1 keeps its answer; 0.7 > 0.5: q2 becomes "" and is right.
    assert squad_v2_metrics(data, preds, probs, na_prob_thresh=0.5)["exact"] == 100.0
    assert squad_v2_metrics(data, preds, probs, na_prob_thresh=0.7)["exact"] == 50.0
    # Without a probability file every probability is 0.0, and a negative threshold still applies to it.
    out = squad_v2_metrics(data, preds, na_prob_thresh=-1.0)
    assert (out["HasAns_exact"], out["NoAns_exact"]) == (0.0, 100.0)


def test_best_threshold_walk_with_ties_hand_computed():
    # Walk order (stable sort by probability, ties in the na_probs order): c, a, b, d.
    # Start = number of unanswerables = 2.  c (NoAns, answered " " -> counts as an answer): 1.
    # a (HasAns, score 1): 2.  b (HasAns, score 1): 3 -> new best at 0.3.  d (NoAns, ""): 3, not higher.
    data = dataset([("a", ["x"]), ("b", ["y"]), ("c", []), ("d", [])])
    preds = {"a": "x", "b": "y", "c": " ", "d": ""}
    probs = {"a": 0.3, "b": 0.3, "c": 0.1, "d": 0.9}
    out = squad_v2_metrics(data, preds, probs)
    assert (out["best_exact"], out["best_exact_thresh"]) == (75.0, 0.3)
    # " " normalises to "", so c's raw exact score is 1, yet the walk counted it as an answer (-1).
    assert out["NoAns_exact"] == 100.0
    # b now answers wrongly: c -1 -> 1, a +1 -> 2, b +0 -> 2, d -> 2; never above the start 2, so the best
    # stays "everything unanswered" at threshold 0.0.
    preds["b"] = "z"
    out = squad_v2_metrics(data, preds, probs)
    assert (out["best_exact"], out["best_exact_thresh"]) == (50.0, 0.0)


def test_best_threshold_keeps_the_probability_as_given():
    # The threshold is the probability object itself: an int stays an int in the JSON ("1", not "1.0").
    data = dataset([("a", ["x"]), ("b", [])])
    out = squad_v2_metrics(data, {"a": "x", "b": "x"}, {"a": 1, "b": 2})
    assert json.dumps([out["best_exact"], out["best_exact_thresh"]]) == "[100.0, 1]"


def test_precision_recall_hand_computed():
    # Order by probability: a(HasAns, 1.0) at 0.1; b(NoAns) and c(HasAns, 0.5) tied at 0.4; d(HasAns, 0) at 0.8.
    # Points only where the probability changes: after a: p=1/1, r=1/3; after {b,c}: p=1.5/3, r=1.5/3;
    # after d: p=1.5/4, r=1.5/3.  AP = 1*(1/3) + 0.5*(0.5-1/3) + 0.375*0 = 5/12.
    scores = {"a": 1, "b": 1, "c": 0.5, "d": 0}
    probs = {"a": 0.1, "b": 0.4, "c": 0.4, "d": 0.8}
    has_ans = {"a": True, "b": False, "c": True, "d": True}
    precisions, recalls, ap = precision_recall_curve(scores, probs, has_ans)
    np.testing.assert_allclose(precisions, [1.0, 1.0, 0.5, 0.375], rtol=0, atol=1e-15)
    np.testing.assert_allclose(recalls, [0.0, 1 / 3, 0.5, 0.5], rtol=0, atol=1e-15)
    assert ap == pytest.approx(100 * 5 / 12, abs=1e-12)


def test_precision_recall_keys_and_images(tmp_path):
    pytest.importorskip("matplotlib", reason="precision-recall images need matplotlib")
    data = dataset([("a", ["x"]), ("b", []), ("c", ["y z"])])
    preds, probs = {"a": "x", "b": "", "c": "z"}, {"a": 0.2, "b": 0.9, "c": 0.5}
    out = squad_v2_metrics(data, preds, probs, out_image_dir=tmp_path / "img")
    assert list(out)[-3:] == ["pr_exact_ap", "pr_f1_ap", "pr_oracle_ap"]
    # Oracle: the two answerable questions come first, so precision 1 up to recall 1.
    assert out["pr_oracle_ap"] == 100.0
    # Exact: a (1) then c (0) then b: AP = 1 * 1/2.  F1: c scores 2/3 -> AP = 1*0.5 + (1.666/2)*(1/3).
    assert out["pr_exact_ap"] == 50.0
    assert out["pr_f1_ap"] == pytest.approx(100 * (0.5 + (5 / 3 / 2) * (1 / 3)), abs=1e-12)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "na_prob_hist_hasAns.png", "na_prob_hist_noAns.png", "pr_exact.png", "pr_f1.png", "pr_oracle.png"]
    # Without answerable questions: no pr keys, only the NoAns histogram (as officially).
    out = squad_v2_metrics(dataset([("b", [])]), {"b": ""}, {"b": 0.3}, out_image_dir=tmp_path / "img2")
    assert not any(k.startswith("pr_") for k in out)
    assert [p.name for p in (tmp_path / "img2").iterdir()] == ["na_prob_hist_noAns.png"]


def test_missing_predictions_count_as_empty_and_unknown_ids_are_ignored():
    # The official script crashes on a missing prediction (KeyError in the HasAns break-down); we score "".
    data = dataset([("a", ["x"]), ("b", [])])
    assert squad_v2_metrics(data, {"zzz": "x"}) == squad_v2_metrics(data, {"a": "", "b": ""})
    assert squad_v2_metrics(data, {"zzz": "x"})["exact"] == 50.0


@pytest.mark.parametrize("preds, probs, message", [
    ({"a": 3}, None, "prediction for 'a' is 3, expected a string"),
    (["x"], None, "expected a JSON object mapping question ids to answer strings"),
    ({"a": "x"}, {"b": 0.1}, "no probability for 1 of 2 questions (first: 'a')"),
    ({"a": "x"}, {"a": "high", "b": 0.1}, "probability for 'a' is \"high\", expected a number"),
    ({"a": "x"}, {"a": True, "b": 0.1}, "probability for 'a' is true, expected a number"),
    ({"a": "x"}, {"a": float("nan"), "b": 0.1}, "probability for 'a' is NaN, expected a number"),
])
def test_bad_inputs_are_one_line_errors(preds, probs, message):
    with pytest.raises(ValueError) as info:
        squad_v2_metrics(dataset([("a", ["x"]), ("b", [])]), preds, probs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("data, message", [
    ({"version": "v2.0"}, "a 'data' list"),
    ({"data": []}, "no questions"),
    ({"data": [{"paragraphs": [{"qas": [{"question": "?", "answers": []}]}]}]}, "qas[0]: missing field 'id'"),
    ({"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": [{"text": 5}]}]}]}]},
     "question 'q': answers[0]: field 'text': expected a string, got 5"),
])
def test_bad_datasets_are_one_line_errors(data, message):
    with pytest.raises(ValueError) as info:
        squad_v2_metrics(data, {})
    assert message in str(info.value)


def test_the_threshold_must_be_a_number():
    data = {"data": [{"paragraphs": [{"qas": [{"id": "q", "answers": [{"text": "x"}]}]}]}]}
    for wrong in ("0.5", None, True):
        with pytest.raises(ValueError, match="na_prob_thresh must be a number"):
            squad_v2_metrics(data, {"q": "x"}, {"q": 0.2}, na_prob_thresh=wrong)
    assert squad_v2_metrics(data, {"q": "x"}, {"q": 0.2}, na_prob_thresh=np.float32(0.5))["exact"] == 100.0
    # A probability too large for a float is still a number, as in the official script (isnan overflowed).
    assert squad_v2_metrics(data, {"q": "x"}, {"q": 10**400}, na_prob_thresh=1.0)["exact"] == 0.0


# ------------------------------------------------------------------------------------- against the oracle

def dataset(questions):
    """A one-paragraph dataset from (id, [gold texts]) pairs; the context is not used by the metrics."""
    qas = [{"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds],
            "is_impossible": not golds} for qid, golds in questions]
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


def official_main(squad_metrics, data, preds, na_probs=None, na_prob_thresh=1.0):
    """The official script's main, built from transformers' port of its functions."""
    qas = [qa for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
    examples = [SimpleNamespace(qas_id=qa["id"], answers=qa["answers"]) for qa in qas]
    has_ans = {}
    for qa in qas:
        has_ans[qa["id"]] = bool(qa["answers"])
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}
    exact_raw, f1_raw = squad_metrics.get_raw_scores(examples, preds)
    exact = squad_metrics.apply_no_ans_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = squad_metrics.apply_no_ans_threshold(f1_raw, probs, has_ans, na_prob_thresh)
    out = squad_metrics.make_eval_dict(exact, f1)
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_ans.items() if v == wanted]
        if qids:
            squad_metrics.merge_eval(out, squad_metrics.make_eval_dict(exact, f1, qid_list=qids), prefix)
    if na_probs is not None:
        squad_metrics.find_all_best_thresh(out, preds, exact_raw, f1_raw, na_probs, has_ans)
    return out


@pytest.fixture(scope="module")
def squad_metrics():
    pytest.importorskip("transformers", reason="transformers 4.x is the oracle (its port of the official script)")
    from transformers.data.metrics import squad_metrics
    return squad_metrics


def test_normalize_exact_f1_equal_the_port_on_random_text(squad_metrics):
    rng = random.Random(0)
    for _ in range(3000):
        gold, pred = random_text(rng), random_text(rng)
        assert normalize_answer(pred) == squad_metrics.normalize_answer(pred)
        assert compute_exact(gold, pred) == squad_metrics.compute_exact(gold, pred)
        f1, expected = compute_f1(gold, pred), squad_metrics.compute_f1(gold, pred)
        assert (f1, type(f1)) == (expected, type(expected))  # bit-equal, and int where the port gives int


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_the_official_main_on_random_cases(squad_metrics, seed):
    rng = random.Random(seed)
    questions = []
    for i in range(rng.randint(1, 30)):
        golds = [random_text(rng, 3) for _ in range(rng.choice([0, 0, 1, 3, 5]))]
        questions.append((f"q{i}", golds))
    if seed % 5 == 0:
        questions.append(("q0", [random_text(rng, 2)]))  # a duplicate id: first position, last answers
    data = dataset(questions)
    preds = {}
    for qid, golds in questions:
        choice = rng.random()
        preds[qid] = (rng.choice(golds) if golds and choice < 0.4 else
                      (rng.choice(golds) + " " + random_text(rng, 2)) if golds and choice < 0.6 else
                      "" if choice < 0.8 else random_text(rng))
    levels = [0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1]  # few distinct values: many ties
    probs = {qid: rng.choice(levels) if seed % 2 else rng.random() for qid in rng.sample(sorted(preds), len(preds))}
    for thresh in (1.0, 0.5, 0.25, -1.0):
        expected = official_main(squad_metrics, data, preds, None, thresh)
        assert json.dumps(squad_v2_metrics(data, preds, None, thresh)) == json.dumps(expected)
        expected = official_main(squad_metrics, data, preds, probs, thresh)
        assert json.dumps(squad_v2_metrics(data, preds, probs, thresh)) == json.dumps(expected)


def test_best_thresh_equals_the_port_with_heavy_ties(squad_metrics):
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 25)
        has_ans = {f"q{i}": rng.random() < 0.5 for i in range(n)}
        scores = {q: rng.choice([0, 1, 0.5, 2 / 3]) for q in has_ans}
        preds = {q: rng.choice(["", " ", "x"]) for q in has_ans}
        probs = {q: rng.choice([0.0, 0.5, 1.0]) for q in rng.sample(sorted(has_ans), n)}
        expected = squad_metrics.find_best_thresh(preds, scores, probs, has_ans)
        got = find_best_thresh(preds, scores, probs, has_ans)
        assert json.dumps(got) == json.dumps(expected)


def test_dev_half_equals_the_official_main(squad_metrics, dev_half_path):
    data = json.loads(dev_half_path.read_text(encoding="utf-8"))
    rng = random.Random(7)
    preds, probs = {}, {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            words = paragraph["context"].split()
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa["answers"]] or [a["text"] for a in qa["plausible_answers"]]
                r = rng.random()
                if r < 0.35:
                    text = golds[0]  # the first gold answer
                elif r < 0.55:
                    text = ""
                elif r < 0.75:  # a mutated gold: a word dropped or added
                    w = golds[0].split()
                    text = " ".join(w[1:] if len(w) > 1 and rng.random() < 0.5 else w + [rng.choice(words)])
                else:  # a random span of the context
                    i = rng.randrange(len(words))
                    text = " ".join(words[i:i + rng.randint(1, 5)])
                preds[qa["id"]] = text
                probs[qa["id"]] = rng.choice([rng.random(), round(rng.random(), 1)])
    for probs_or_none, thresh in ((None, 1.0), (probs, 0.5)):
        expected = official_main(squad_metrics, data, preds, probs_or_none, thresh)
        got = squad_v2_metrics(data, preds, probs_or_none, thresh)
        assert json.dumps(got) == json.dumps(expected)
    assert got["total"] == 6078 and got["HasAns_total"] == 2910
