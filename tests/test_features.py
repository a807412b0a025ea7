"""build_features (BERT's sliding windows), batch_indices and make_batch."""
import json
import warnings
from collections import defaultdict

import numpy as np
import pytest
import torch

from minispan.features import (
    Feature,
    batch_indices,
    build_features,
    make_batch,
    max_context_masks,
    window_starts,
)
from minispan.squad import Answer, Example, SquadWarning, read_squad
from minispan.tokenizer import load_tokenizer


def dev_subset(dev_half_path, path):
    """120 real questions (173 features): the first 5 paragraphs of the first article (one window each) and two
    paragraphs longer than 1,800 characters (two or three windows) from each article that has them."""
    data = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"]
    articles = [{"title": data[0]["title"], "paragraphs": data[0]["paragraphs"][:5]}]
    for article in data[1:]:
        long = [p for p in article["paragraphs"] if len(p["context"]) > 1800]
        if long:
            articles.append({"title": article["title"], "paragraphs": long[:2]})
    path.write_text(json.dumps({"version": "v2.0", "data": articles}), encoding="utf-8")
    return path


@pytest.mark.parametrize("training", [False, True])
def test_windows_and_targets_match_legacy_processor(dev_half_path, minilm_dir, tmp_path, training):
    """Same input ids, token types, max-context flags and training targets as transformers 4.46's
    squad_convert_examples_to_features (slow BertTokenizer), feature for feature.

    doc_stride: the legacy processor starts window k at k * doc_stride context tokens (it asks the tokenizer
    for an overlap of max_seq_length - doc_stride - len(question) - 3, which puts the next window doc_stride
    tokens further on), so its doc_stride is the STEP, like ours: the oracle gets the same 128. (In the
    transformers pipeline doc_stride is the overlap instead: see test_pipeline.)

    Whole dev half, measured once by hand (MiniLM vocab, 384/128/64): evaluation 6,372 of 6,372 features
    identical (100%); training 6,371 of 6,372 (99.984%). The one difference: answer "Japan" inside the word
    "Japanese)": ours is the token "japanese" (the tokens whose characters hold the answer), legacy is
    "japanese )" (it maps answers to whole white-space words, then fails to tighten the span). Feature
    counts per question equal throughout.
    """
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    from transformers.data.processors.squad import SquadV2Processor, squad_convert_examples_to_features

    subset = dev_subset(dev_half_path, tmp_path / "subset.json")
    processor = SquadV2Processor()
    legacy_examples = (processor.get_train_examples if training else processor.get_dev_examples)(tmp_path, subset.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SquadWarning)  # mislocated answers: read_squad's business, tested there
        examples = read_squad(subset, training=training)
    slow = transformers.BertTokenizer.from_pretrained(str(minilm_dir))
    legacy = squad_convert_examples_to_features(
        legacy_examples, slow, 384, 128, 64, is_training=training, tqdm_enabled=False
    )
    ours = build_features(examples, load_tokenizer(minilm_dir), max_seq_length=384, doc_stride=128, max_query_length=64,
                          training=training)

    ours_by_id, legacy_by_id = defaultdict(list), defaultdict(list)
    for f in ours:
        ours_by_id[examples[f.example_index].id].append(f)
    for f in legacy:
        legacy_by_id[f.qas_id].append(f)
    assert {q: len(fs) for q, fs in ours_by_id.items()} == {q: len(fs) for q, fs in legacy_by_id.items()}
    assert len(ours) > len(examples) + 40  # many questions really have several windows

    differences = []
    for qid, features in ours_by_id.items():
        for f, g in zip(features, legacy_by_id[qid]):
            n = len(f.input_ids)
            assert f.input_ids == g.input_ids[:n] and set(g.input_ids[n:]) <= {slow.pad_token_id}
            assert f.token_type_ids == g.token_type_ids[:n]
            assert f.token_is_max_context == [g.token_is_max_context.get(i, False) for i in range(n)]
            if training and (f.start_position, f.end_position) != (g.start_position, g.end_position):
                differences.append((qid, f, g))
    # Every target difference must be the explained kind: the answer lies inside a white-space word, and
    # ours is the tighter span that still covers all its characters.
    for qid, f, g in differences:
        example = next(e for e in examples if e.id == qid)
        answer = example.answers[0]
        assert g.start_position <= f.start_position <= f.end_position <= g.end_position
        assert f.offsets[f.start_position][0] <= answer.start
        assert f.offsets[f.end_position][1] >= answer.start + len(answer.text)
    assert len(differences) <= 0.005 * len(ours)  # measured here: 0 of 173 (eval and training)


# ---- small hand-made cases: a vocabulary of words t0..t49, so every word is one token --------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vocab")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "?", ".", "##s"] + [f"t{i}" for i in range(50)]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return load_tokenizer(directory)


CONTEXT = " ".join(f"t{i}" for i in range(20))  # 20 tokens, "t0 t1 ... t19"


def example(question="t1 t2?", context=CONTEXT, answer=None, start=None, is_impossible=False, id="q"):
    answers = [] if answer is None else [Answer(answer, context.index(answer) if start is None else start)]
    return Example(id, "", question, context, answers, is_impossible)


def test_windows_step_by_doc_stride_and_lay_out_question_then_context(tokenizer):
    # Question "t1 t2?" is 3 tokens, so 14 - 3 - 3 = 8 context tokens per window; doc_stride 3 is the step.
    features = build_features([example()], tokenizer, max_seq_length=14, doc_stride=3)
    assert [f.window_start for f in features] == [0, 3, 6, 9, 12]  # the last is the first to reach t19
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    question = tokenizer.encode("t1 t2?").ids
    for f in features:
        window = tokenizer.encode(CONTEXT).ids[f.window_start : f.window_start + 8]
        assert f.input_ids == [cls] + question + [sep] + window + [sep]
        assert f.token_type_ids == [0] * 5 + [1] * (len(window) + 1)
        assert f.offsets[:5] == [None] * 5 and f.offsets[-1] is None
        for token_id, (start, end) in zip(window, f.offsets[5:-1]):
            assert tokenizer.convert_ids_to_tokens([token_id]) == [CONTEXT[start:end]]
        assert f.start_position is None and f.example_index == 0
    # Every context token is max-context in exactly one window.
    owner = defaultdict(list)
    for k, f in enumerate(features):
        for i, is_max in enumerate(f.token_is_max_context):
            if is_max:
                owner[f.window_start + i - 5].append(k)
    assert sorted(owner) == list(range(20)) and all(len(v) == 1 for v in owner.values())


def test_max_context_matches_the_original_rule(tokenizer):
    """The vectorised masks against a direct transcription of the rule, one token and window at a time."""
    def brute(num_tokens, starts, max_window):
        lengths = [min(max_window, num_tokens - s) for s in starts]
        masks = [[] for _ in starts]
        for k, (s, n) in enumerate(zip(starts, lengths)):
            for p in range(s, s + n):
                best, best_k = None, None
                for j, (s2, n2) in enumerate(zip(starts, lengths)):
                    if s2 <= p < s2 + n2:
                        score = min(p - s2, s2 + n2 - 1 - p) + 0.01 * n2
                        if best is None or score > best:
                            best, best_k = score, j
                masks[k].append(best_k == k)
        return masks

    rng = np.random.default_rng(0)
    for _ in range(200):
        num_tokens, max_window = int(rng.integers(0, 60)), int(rng.integers(1, 20))
        stride = int(rng.integers(1, max_window + 1))
        starts = window_starts(num_tokens, max_window, stride)
        masks = max_context_masks(num_tokens, starts, max_window)
        assert [m.tolist() for m in masks] == brute(num_tokens, starts, max_window)


def test_max_context_memory_grows_with_the_context_not_windows_times_context():
    """A long document (a pipeline user's whole article) must not cost windows x tokens of memory: 40k
    tokens in windows of 350 stepping 128 are 311 windows: a float64 matrix of them peaked at 200 MB (what
    this function did before; a 540k-character context to the pipeline took 18 GB). Now 1.1 MB."""
    import tracemalloc

    num_tokens, max_window, stride = 40_000, 350, 128
    starts = window_starts(num_tokens, max_window, stride)
    tracemalloc.start()
    try:
        masks = max_context_masks(num_tokens, starts, max_window)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(masks) == len(starts) == 311
    assert sum(int(m.sum()) for m in masks) == num_tokens  # every token is max-context in exactly one window
    assert peak < 10e6, f"peak {peak / 1e6:.0f} MB"


def test_training_targets(tokenizer):
    examples = [
        example(answer="t10 t11"),  # in windows 6.. and 9.. wholly; window 3.. cuts it (t11 outside)
        example(is_impossible=True, id="none"),
        example(answer="t3 t4", start=CONTEXT.index("t3 t4") + 1, id="bad"),  # text not at answer_start: skipped
    ]
    features = build_features(examples, tokenizer, max_seq_length=14, doc_stride=3, training=True)
    assert [f.example_index for f in features] == [0] * 5 + [1] * 5
    positions = [(f.start_position, f.end_position) for f in features[:5]]
    assert positions == [(0, 0), (0, 0), (5 + 10 - 6, 5 + 11 - 6), (5 + 10 - 9, 5 + 11 - 9), (0, 0)]
    assert all((f.start_position, f.end_position) == (0, 0) for f in features[5:])
    f = features[2]
    assert CONTEXT[f.offsets[f.start_position][0] : f.offsets[f.end_position][1]] == "t10 t11"
    # Evaluation features keep every example, targets unset.
    assert len(build_features(examples, tokenizer, max_seq_length=14, doc_stride=3)) == 15


def test_answer_inside_a_word_gets_the_tokens_holding_it(tokenizer):
    context = "t1 t5s t7."  # tokens t1 | t5 ##s | t7 | .
    [f] = build_features([example(context=context, answer="s", start=5)], tokenizer, training=True)
    assert tokenizer.convert_ids_to_tokens(f.input_ids[f.start_position : f.end_position + 1]) == ["##s"]
    [f] = build_features([example(context=context, answer="t5s t7", start=3)], tokenizer, training=True)
    assert tokenizer.convert_ids_to_tokens(f.input_ids[f.start_position : f.end_position + 1]) == ["t5", "##s", "t7"]


def test_question_truncation_empty_context_and_errors(tokenizer):
    long_question = " ".join(f"t{i}" for i in range(30))
    [f] = build_features([example(question=long_question)], tokenizer, max_query_length=4)
    truncated = tokenizer.encode(long_question).ids[:4]
    assert f.input_ids[:6] == [tokenizer.cls_token_id] + truncated + [tokenizer.sep_token_id]
    [f] = build_features([example(context=" ")], tokenizer)  # no context tokens: still one window, so one null score
    assert f.input_ids[-2:] == [tokenizer.sep_token_id] * 2 and f.token_type_ids[-1] == 1
    with pytest.raises(ValueError, match=r"example 0 \('q'\), fewer than doc_stride=10: windows would skip"):
        build_features([example()], tokenizer, max_seq_length=14, doc_stride=10)
    with pytest.raises(ValueError, match="doc_stride must be a positive integer, got 0"):
        build_features([example()], tokenizer, doc_stride=0)
    for name, value in (("doc_stride", 16.5), ("max_seq_length", None), ("max_query_length", True)):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got {value}"):
            build_features([example()], tokenizer, **{name: value})
    with pytest.raises(ValueError, match="'q'.*answerable but has no answers"):
        build_features([example()], tokenizer, training=True)


def test_batch_indices_group_by_length():
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 385, size=1000).tolist()
    batches = batch_indices(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    flat = [i for b in batches for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # prediction: longest first
    assert batch_indices(lengths, 8, group_by_length=False)[:2] == [list(range(8)), list(range(8, 16))]

    train = batch_indices(lengths, 8, shuffle=True, seed=3)
    assert train == batch_indices(lengths, 8, shuffle=True, seed=3)  # deterministic given the seed
    assert train != batch_indices(lengths, 8, shuffle=True, seed=4)
    assert sorted(i for b in train for i in b) == list(range(1000))
    assert all(len(b) == 8 for b in train)  # 1000 = 125 * 8
    padding = lambda bs: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)
    random_batches = batch_indices(lengths, 8, shuffle=True, seed=3, group_by_length=False)
    assert padding(train) < 0.2 * padding(random_batches)  # measured: about 6% of the random batches' padding
    # Consecutive training batches do not simply walk down the lengths: the batch order is shuffled.
    maxima = [max(lengths[i] for i in b) for b in train]
    assert maxima != sorted(maxima, reverse=True)
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(lengths, 0)


def test_make_batch_pads_to_the_longest_feature():
    features = [
        Feature(0, [2, 7, 3, 9, 3], [0, 0, 0, 1, 1], [None] * 5, [False] * 5, 3, 3),
        Feature(1, [2, 7, 3], [0, 0, 0], [None] * 3, [False] * 3, 0, 0),
    ]
    batch = make_batch(features, pad_token_id=5, training=True, pin_memory=True)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 9, 3], [2, 7, 3, 5, 5]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["start_positions"].tolist() == [3, 0] and batch["end_positions"].tolist() == [3, 0]
    assert all(t.dtype == torch.long for t in batch.values())
    assert set(make_batch(features)) == {"input_ids", "token_type_ids", "attention_mask"}
    wide = make_batch(features, pad_token_id=5, length=7)  # e.g. the widest feature of a global batch
    assert wide["input_ids"].tolist() == [[2, 7, 3, 9, 3, 5, 5], [2, 7, 3, 5, 5, 5, 5]]
    assert wide["attention_mask"].tolist() == [[1] * 5 + [0] * 2, [1] * 3 + [0] * 4]
    with pytest.raises(ValueError, match="shorter than the longest"):
        make_batch(features, length=4)
    features[1].start_position = None
    with pytest.raises(ValueError, match="no start/end position"):
        make_batch(features, training=True)
    with pytest.raises(ValueError, match="no features"):
        make_batch([])
