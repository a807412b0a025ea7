"""postprocess: best spans, null odds and n-best lists from per-feature logits; write_predictions."""
import json
import warnings

import numpy as np
import pytest
import torch

from minispan.features import Feature, build_features
from minispan.metrics import normalize_answer  # the official normalisation, checked in test_metrics
from minispan.postprocess import postprocess, write_predictions
from minispan.squad import Example, SquadWarning, read_squad
from minispan.tokenizer import load_tokenizer


def random_logits(features, examples, seed=0):
    """Random logits per feature; low start logits inside white-space words (see DESIGN's quirks: legacy
    cannot align a span that starts there); a raised [CLS] so about half the questions come out null."""
    rng = np.random.default_rng(seed)
    starts, ends = [], []
    for f in features:
        context = examples[f.example_index].context
        s, e = rng.normal(0, 3, len(f.input_ids)), rng.normal(0, 3, len(f.input_ids))
        inside_word = [o is not None and o[0] > 0 and context[o[0] - 1] not in " \t\r\n\u202f" for o in f.offsets]
        s[np.array(inside_word)] -= 20
        s[0] += 7
        e[0] += 7
        starts.append(s)
        ends.append(e)
    return starts, ends


def test_matches_legacy_compute_predictions_logits(dev_half_path, minilm_dir, tmp_path):
    """Same random logits through ours and transformers 4.46's compute_predictions_logits.

    Measured on these 245 questions (287 features; 103 predicted null): answers equal after normalisation
    245/245, null odds max |diff| 3.6e-15, n-best texts and probabilities equal 245/245.
    Whole dev half, by hand: answers 6,076/6,078 equal (99.97%), null odds max |diff| 3.6e-15, n-best lists
    6,046/6,078. The two different answers are legacy's word-alignment fallback (DESIGN quirks): around
    zero-width spaces ("model—\u200b\u200bmany") and CJK characters it returns whole white-space words.
    """
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    from transformers.data.metrics.squad_metrics import compute_predictions_logits
    from transformers.data.processors.squad import SquadResult, SquadV2Processor, squad_convert_examples_to_features

    data = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"]
    # Normans (one window per question) and Packet_switching (some questions with two windows).
    subset = {"version": "v2.0", "data": [{"title": data[i]["title"], "paragraphs": data[i]["paragraphs"][:n]}
                                          for i, n in [(0, 8), (6, 10)]]}
    (tmp_path / "subset.json").write_text(json.dumps(subset), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SquadWarning)
        examples = read_squad(tmp_path / "subset.json")
    legacy_examples = SquadV2Processor().get_dev_examples(tmp_path, "subset.json")
    slow = transformers.BertTokenizer.from_pretrained(str(minilm_dir))
    legacy_features = squad_convert_examples_to_features(legacy_examples, slow, 384, 128, 64, False, tqdm_enabled=False)
    features = build_features(examples, load_tokenizer(minilm_dir))
    assert len(features) == len(legacy_features)  # the same windows, in the same order (test_features)
    assert len(features) > len(examples)

    starts, ends = random_logits(features, examples)
    pad = lambda x: list(x) + [-1e4] * (384 - len(x))  # a trained model's logits at padding are very low
    results = [SquadResult(g.unique_id, pad(s), pad(e)) for g, s, e in zip(legacy_features, starts, ends)]
    files = [str(tmp_path / name) for name in ("predictions.json", "nbest.json", "odds.json")]
    legacy = compute_predictions_logits(
        legacy_examples, legacy_features, results, 20, 30, True, *files, False, True, 0.0, slow
    )
    legacy_nbest = json.loads((tmp_path / "nbest.json").read_text())
    legacy_odds = json.loads((tmp_path / "odds.json").read_text())

    predictions, null_odds, nbest = postprocess(examples, features, starts, ends)
    ids = [e.id for e in examples]
    assert list(predictions) == ids and list(null_odds) == ids and list(nbest) == ids
    same = sum(normalize_answer(predictions[q]) == normalize_answer(legacy[q]) for q in ids)
    assert same == len(ids)  # measured: all
    assert 0.25 < sum(p == "" for p in predictions.values()) / len(ids) < 0.75  # both branches exercised
    assert max(abs(null_odds[q] - legacy_odds[q]) for q in ids) < 1e-12  # measured: 3.6e-15
    same_nbest = 0
    for q in ids:
        ours, theirs = nbest[q], legacy_nbest[q]
        same_nbest += [normalize_answer(x["text"]) for x in ours] == [normalize_answer(x["text"]) for x in theirs] and (
            np.allclose([x["probability"] for x in ours], [x["probability"] for x in theirs], rtol=1e-6, atol=1e-9)
        )
    assert same_nbest == len(ids)  # measured: all
    for example in examples:  # exact substrings, at the offsets the n-best gives
        assert predictions[example.id] in example.context
        for entry in nbest[example.id]:
            if entry["text"]:
                assert example.context[entry["start"] : entry["end"]] == entry["text"]


# ---- hand-made features ---------------------------------------------------------------------------------------

CONTEXT = "Ann met Bob in Paris."


def hand_feature(example_index=0, max_context=None):
    """[CLS] q [SEP] Ann met Bob in Paris . [SEP]: positions 3..8 are the context tokens."""
    spans = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 20), (20, 21)]
    offsets = [None, None, None] + spans + [None]
    is_max = [o is not None for o in offsets] if max_context is None else max_context
    return Feature(example_index, list(range(10)), [0, 0, 0] + [1] * 7, offsets, is_max)


def logits(high=(), base=0.0, n=10):
    x = np.full(n, base)
    for i, v in high:
        x[i] = v
    return x


def test_best_span_null_odds_and_filters():
    example = Example("q", "", "Who?", CONTEXT)
    f = hand_feature()
    # Best start "Bob" (5), best end "Paris" (7): a valid 3-token span; [CLS] scores 1 + 1.
    s, e = logits([(5, 4.0), (0, 1.0)]), logits([(7, 3.0), (0, 1.0)])
    predictions, null_odds, nbest = postprocess([example], [f], [s], [e])
    assert predictions["q"] == "Bob in Paris"
    assert null_odds["q"] == pytest.approx(2.0 - 7.0)
    top = nbest["q"][0]
    assert (top["text"], top["start"], top["end"]) == ("Bob in Paris", 8, 20)
    assert (top["start_logit"], top["end_logit"]) == (4.0, 3.0)
    assert sum(x["probability"] for x in nbest["q"]) == pytest.approx(1.0)
    assert [x["text"] for x in nbest["q"]].count("") == 1
    texts = [x["text"] for x in nbest["q"]]
    assert len(texts) == len(set(texts))  # each answer text once

    # Too long for max_answer_length=2: the best remaining span wins instead.
    predictions, _, _ = postprocess([example], [f], [s], [e], max_answer_length=2)
    assert predictions["q"] in {"Bob in", "Bob"}
    # End before start is never a candidate: a high end on "Ann" (3) with the start on "Bob".
    predictions, _, _ = postprocess([example], [f], [logits([(5, 4.0)], base=-10)], [logits([(3, 9.0), (7, 3.0)])])
    assert predictions["q"] == "Bob in Paris"
    # A start that is not max-context in this window is skipped.
    not_max = [o is not None for o in f.offsets]
    not_max[5] = False
    predictions, _, _ = postprocess([example], [hand_feature(max_context=not_max)], [s], [e])
    assert not predictions["q"].startswith("Bob")
    # Spans in the question or on special tokens are never answers.
    predictions, _, _ = postprocess([example], [f], [logits([(1, 50.0), (5, 4.0)])], [logits([(2, 50.0), (7, 3.0)])])
    assert predictions["q"] == "Bob in Paris"


def test_a_tie_between_null_and_span_keeps_the_span():
    # Null score 3.5 + 3.5 equals the best span's 4 + 3: null odds 0 is not above the threshold 0.
    example = Example("q", "", "Who?", CONTEXT)
    s, e = logits([(5, 4.0), (0, 3.5)]), logits([(7, 3.0), (0, 3.5)])
    predictions, null_odds, nbest = postprocess([example], [hand_feature()], [s], [e])
    assert null_odds["q"] == 0.0 and predictions["q"] == "Bob in Paris"
    assert [x["text"] for x in nbest["q"][:2]] == ["Bob in Paris", ""]  # the span first on equal scores


def test_the_same_text_from_two_windows_is_listed_once():
    # Two windows over the same tokens both propose "Bob" (one start and end logit each): the n-best keeps the
    # better-scoring one, and lists every text once.
    example = Example("q", "", "Who?", CONTEXT)
    starts, ends = [logits([(5, 4.0)]), logits([(5, 3.0)])], [logits([(5, 3.0)]), logits([(5, 2.0)])]
    _, _, nbest = postprocess([example], [hand_feature(), hand_feature()], starts, ends)
    texts = [x["text"] for x in nbest["q"]]
    assert texts[0] == "Bob" and nbest["q"][0]["start_logit"] == 4.0
    assert texts.count("Bob") == 1 and len(texts) == len(set(texts))


def test_threshold_and_null_over_windows():
    example = Example("q", "", "Who?", CONTEXT)
    s, e = logits([(5, 4.0), (0, 3.0)]), logits([(7, 3.0), (0, 3.0)])  # null 6 < best 7
    predictions, null_odds, _ = postprocess([example], [hand_feature()], [s], [e])
    assert predictions["q"] == "Bob in Paris" and null_odds["q"] == pytest.approx(-1.0)
    predictions, _, _ = postprocess([example], [hand_feature()], [s], [e], null_score_diff_threshold=-1.5)
    assert predictions["q"] == ""
    # Two windows: the null score is the SMALLEST [CLS] score over them; the best span over both.
    s2, e2 = logits([(4, 2.0), (0, -2.0)]), logits([(4, 2.0), (0, 0.5)])  # null -1.5, span "met" 4
    predictions, null_odds, nbest = postprocess([example], [hand_feature(), hand_feature()], [s, s2], [e, e2])
    assert predictions["q"] == "Bob in Paris" and null_odds["q"] == pytest.approx(-1.5 - 7.0)
    assert "met" in [x["text"] for x in nbest["q"]]  # the second window's best span is listed too
    # Torch tensors work as well as numpy arrays.
    predictions_t, null_odds_t, _ = postprocess([example], [hand_feature()], [torch.tensor(s)], [torch.tensor(e)])
    assert predictions_t["q"] == "Bob in Paris" and null_odds_t["q"] == pytest.approx(-1.0)


def test_no_valid_span_predicts_no_answer():
    example = Example("q", "", "Who?", "Hi")
    f = Feature(0, [0, 1, 2, 3, 4], [0, 0, 0, 1, 1], [None, None, None, (0, 2), None], [False] * 5)  # not max-context
    predictions, null_odds, nbest = postprocess([example], [f], [np.zeros(5)], [np.zeros(5)])
    assert predictions == {"q": ""} and null_odds["q"] > 1e6
    assert [x["text"] for x in nbest["q"]] == [""] and nbest["q"][0]["probability"] == 1.0


def test_bad_logits_are_reported():
    example = Example("q", "", "Who?", CONTEXT)
    with pytest.raises(ValueError, match="1 features but 2 start and 1 end logits"):
        postprocess([example], [hand_feature()], [np.zeros(10)] * 2, [np.zeros(10)])
    with pytest.raises(ValueError, match="feature 0 has 10 tokens but 384 start / 384 end logits"):
        postprocess([example], [hand_feature()], [np.zeros(384)], [np.zeros(384)])
    # Limits that would silently answer "" everywhere (0) or list every candidate (-1):
    for limit in ("n_best_size", "max_answer_length"):
        for value in (0, -1, 2.5):
            with pytest.raises(ValueError, match=f"{limit} must be a positive integer, got {value}"):
                postprocess([example], [hand_feature()], [np.zeros(10)], [np.zeros(10)], **{limit: value})
    with pytest.raises(ValueError, match="feature 0 belongs to example 1, but there are 1 examples"):
        postprocess([example], [hand_feature(example_index=1)], [np.zeros(10)], [np.zeros(10)])


def test_write_predictions_is_atomic_json(tmp_path):
    predictions, null_odds, nbest = {"q": "Bob"}, {"q": -1.5}, {"q": [{"text": "Bob", "probability": 1.0}]}
    write_predictions(tmp_path / "out", predictions, null_odds, nbest)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == predictions
    assert json.loads((tmp_path / "out" / "null_odds.json").read_text()) == null_odds
    assert json.loads((tmp_path / "out" / "nbest_predictions.json").read_text()) == nbest
    write_predictions(tmp_path / "out2", predictions, null_odds)
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["null_odds.json", "predictions.json"]
