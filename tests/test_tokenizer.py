"""load_tokenizer: BERT WordPiece ids and character offsets, checked against transformers' slow BertTokenizer."""
import json
import unicodedata

import pytest

from minispan.tokenizer import load_tokenizer

TRICKY = [
    "Héllo, WORLD! It's 1990s-era naïve café — ok?",
    "Ünïcödé àccents and ÅNGSTRÖM",
    "中文字符 mixed with English",
    "tabs\tand\nnew lines\r\nand\u00a0nbsp and \u202f narrow",
    "control\x00chars\ufffd and \x07 bell",
    "unbelievably supercalifragilisticexpialidocious " + "x" * 120,
    "",
    "   ",
]


def write_vocab(directory, tokens, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    if config is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


SMALL_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SMALL_VOCAB += ["hello", "Hello", "world", "##s", "cafe", "café", ",", "!"]


def test_ids_match_slow_bert_tokenizer_on_real_text(dev_half_path, minilm_dir):
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    slow = transformers.BertTokenizer.from_pretrained(str(minilm_dir))
    ours = load_tokenizer(minilm_dir)
    assert ours.lowercase and ours.strip_accents  # from tokenizer_config.json: do_lower_case true
    data = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"][:2]
    texts = [p["context"] for a in data for p in a["paragraphs"]]
    texts += [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    texts += TRICKY
    encodings = ours.encode_batch(texts)
    # Measured: all 633 real texts + the tricky ones identical (and all 6,724 texts of the dev half).
    for text, encoding in zip(texts, encodings):
        assert encoding.ids == slow.encode(text, add_special_tokens=False), text
    cased = load_tokenizer(minilm_dir / "vocab.txt", lowercase=False)  # no lower-casing, no accent stripping
    slow_cased = transformers.BertTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=False)
    for text in TRICKY:
        assert cased.encode(text).ids == slow_cased.encode(text, add_special_tokens=False), text


def test_offsets_point_into_the_original_text(minilm_dir):
    tokenizer = load_tokenizer(minilm_dir)
    for text in TRICKY:
        encoding = tokenizer.encode(text)
        previous_end = 0
        for token, (start, end) in zip(encoding.tokens, encoding.offsets):
            assert previous_end <= start < end <= len(text)
            previous_end = end
            if token == "[UNK]":
                continue
            # Undo what the normaliser did to the original characters: lower-case and strip accents.
            original = "".join(
                c for c in unicodedata.normalize("NFD", text[start:end].lower()) if unicodedata.category(c) != "Mn"
            )
            assert original == token.removeprefix("##"), (text, token, text[start:end])


def test_lowercase_comes_from_tokenizer_config(tmp_path):
    cased = load_tokenizer(write_vocab(tmp_path / "cased", SMALL_VOCAB, {"do_lower_case": False}))  # SpanBERT's
    assert not cased.lowercase and not cased.strip_accents
    assert cased.encode("Hello hello café").tokens == ["Hello", "hello", "café"]
    uncased = load_tokenizer(write_vocab(tmp_path / "uncased", SMALL_VOCAB, {"do_lower_case": True}))
    assert uncased.lowercase and uncased.strip_accents  # BERT strips accents when lower-casing
    assert uncased.encode("Hello HELLO Café").tokens == ["hello", "hello", "cafe"]
    assert uncased.encode("Café").offsets == [(0, 4)]  # offsets are into the original, accented text
    keep_accents = load_tokenizer(
        write_vocab(tmp_path / "keep", SMALL_VOCAB, {"do_lower_case": True, "strip_accents": False})
    )
    assert keep_accents.encode("Café").tokens == ["café"]
    assert load_tokenizer(tmp_path / "uncased", lowercase=False).encode("Hello").tokens == ["Hello"]
    assert cased.encode("worlds, unknown!").tokens == ["world", "##s", ",", "[UNK]", "!"]
    # No tokenizer_config.json: lower-cased, as transformers' BertTokenizer does by default (it was read cased).
    assert load_tokenizer(write_vocab(tmp_path / "none", SMALL_VOCAB)).encode("Hello").tokens == ["hello"]


def test_a_cased_vocabulary_read_lower_cased_says_so_in_one_line(tmp_path, caplog):
    """The classic trap (transformers#3823, biobert#163): a cased model whose files do not say so is read
    lower-cased, as transformers 4.x reads it. Before the fix, such a folder was read cased, with no word."""
    with caplog.at_level("WARNING", logger="minispan"):
        tokenizer = load_tokenizer(write_vocab(tmp_path / "none", SMALL_VOCAB))
    assert tokenizer.lowercase and len(caplog.records) == 1 and "\n" not in caplog.text.strip()
    assert "a cased vocabulary, read lower-cased because no tokenizer_config.json says do_lower_case false" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="minispan"):
        load_tokenizer(write_vocab(tmp_path / "said", SMALL_VOCAB, {"do_lower_case": True}))
    assert "because its tokenizer_config.json says do_lower_case true" in caplog.text
    caplog.clear()
    lower = [t for t in SMALL_VOCAB if t != "Hello"]
    with caplog.at_level("WARNING", logger="minispan"):
        load_tokenizer(write_vocab(tmp_path / "lower", lower))  # an uncased vocabulary: nothing to say
        load_tokenizer(tmp_path / "said", lowercase=True)  # asked for explicitly
        load_tokenizer(write_vocab(tmp_path / "cased", SMALL_VOCAB, {"do_lower_case": False}))
    assert caplog.text == ""


def cased_vocabulary(minilm_dir):
    """MiniLM's (uncased) vocabulary plus 3,000 capitalised words: a cased vocabulary for the parity tests."""
    tokens = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    capitalised = [t.capitalize() for t in tokens if t.isalpha() and t.islower() and len(t) > 2]
    return tokens + capitalised[:3000]


@pytest.mark.parametrize("config", [{"do_lower_case": True}, {"do_lower_case": False}, None])
def test_ids_match_autotokenizer_for_each_tokenizer_config(tmp_path, minilm_dir, dev_half_path, config):
    """The three tokenizer_config.json variants of the Hub's BERT checkpoints (lower-casing, cased, absent), with
    a special_tokens_map.json: ids equal to transformers 4.46's AutoTokenizer on the same folder, on real text,
    the tricky texts and special tokens written in the text. Measured: all equal in each variant."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    folder = write_vocab(tmp_path / "model", cased_vocabulary(minilm_dir), config)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[UNK]", "sep_token": "[SEP]",
                                                                "pad_token": "[PAD]", "cls_token": "[CLS]",
                                                                "mask_token": "[MASK]"}))
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = load_tokenizer(folder)
    assert ours.lowercase == theirs.do_lower_case == (config is None or config["do_lower_case"])
    data = json.loads(dev_half_path.read_text(encoding="utf-8"))["data"][:1]
    texts = [p["context"] for a in data for p in a["paragraphs"]]
    texts += [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]]
    texts += TRICKY + ["Who wrote [SEP] the [MASK] in [CLS]Paris[UNK]?", "[sep] [Mask]"]
    for text, encoding in zip(texts, ours.encode_batch(texts)):
        assert encoding.ids == theirs.encode(text, add_special_tokens=False), text


def test_special_tokens_and_model_max_length_as_autotokenizer_reads_them(tmp_path):
    """special_tokens_map.json renames the special tokens (it wins over tokenizer_config.json, as in
    transformers 4.x, unless the latter lists added_tokens_decoder); model_max_length is the config's."""
    transformers = pytest.importorskip("transformers", reason="transformers 4.46 is the test oracle")
    vocab = ["<pad>", "<unk>", "<cls>", "<sep>", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]
    config = {"do_lower_case": True, "model_max_length": 128, "unk_token": "[UNK]",
              "cls_token": {"__type": "AddedToken", "content": "<cls>"}}  # as newer transformers save it
    folder = write_vocab(tmp_path / "renamed", vocab, config)
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"unk_token": "<unk>", "sep_token": {"content": "<sep>", "lstrip": False}, "pad_token": "<pad>"}))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    ours, theirs = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert (ours.pad_token_id, ours.unk_token_id, ours.cls_token_id, ours.sep_token_id) == \
        (theirs.pad_token_id, theirs.unk_token_id, theirs.cls_token_id, theirs.sep_token_id) == (0, 1, 2, 3)
    assert ours.model_max_length == theirs.model_max_length == 128
    assert ours.encode("hello <sep> planet").ids == theirs.encode("hello <sep> planet", add_special_tokens=False)
    ours.save(tmp_path / "saved")  # and kept when saved
    again = load_tokenizer(tmp_path / "saved")
    assert (again.special, again.model_max_length) == (ours.special, 128)
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": 7}))
    with pytest.raises(ValueError, match=r"special_tokens_map.json: special tokens must be strings, got \[.*, 7"):
        load_tokenizer(folder)


def test_special_ids_and_save_round_trip(tmp_path):
    tokenizer = load_tokenizer(write_vocab(tmp_path / "a", SMALL_VOCAB, {"do_lower_case": True}))
    special = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert special == (0, 1, 2, 3)
    assert tokenizer.vocab_size == len(SMALL_VOCAB)
    tokenizer.save(tmp_path / "b")
    assert (tmp_path / "b" / "vocab.txt").read_text(encoding="utf-8").splitlines() == SMALL_VOCAB
    assert json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())["do_lower_case"] is True
    again = load_tokenizer(tmp_path / "b")
    assert again.encode("Hello Café, worlds!").ids == tokenizer.encode("Hello Café, worlds!").ids
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["tokenizer_config.json", "vocab.txt"]  # no temp files


def test_a_repeated_vocabulary_line_keeps_the_ids_of_the_file(tmp_path):
    """vocab.txt with "hello" on lines 5 and 9: the last line wins, as in BERT's load_vocab (transformers'
    is the oracle here), so every id is the checkpoint's; saving keeps line i = id i, so nothing shifts."""
    tokens = SMALL_VOCAB[:9] + ["hello"] + SMALL_VOCAB[9:]
    tokenizer = load_tokenizer(write_vocab(tmp_path / "a", tokens))
    transformers = pytest.importorskip("transformers", reason="transformers' load_vocab is the oracle")
    load_vocab = transformers.models.bert.tokenization_bert.load_vocab
    assert tokenizer.vocab == dict(load_vocab(str(tmp_path / "a" / "vocab.txt")))
    assert tokenizer.vocab["hello"] == 9 and tokenizer.vocab["!"] == len(tokens) - 1
    assert tokenizer.vocab_size == len(tokens)  # embedding rows: line 5's id stays taken
    tokenizer.save(tmp_path / "b")
    again = load_tokenizer(tmp_path / "b")
    assert {t: i for t, i in again.vocab.items() if t in tokenizer.vocab} == tokenizer.vocab
    assert again.vocab_size == len(tokens)
    assert again.encode("hello worlds!").ids == tokenizer.encode("hello worlds!").ids == [9, 7, 8, 13]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match=r"nospecial/vocab.txt: vocabulary: missing special token\(s\) \[CLS\]"):
        load_tokenizer(write_vocab(tmp_path / "nospecial", ["[PAD]", "[UNK]", "hello"]))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "caf\xe9"]).encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8 text"):
        load_tokenizer(latin1)
    bad = write_vocab(tmp_path / "badjson", SMALL_VOCAB)
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: not valid JSON"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match="do_lower_case must be true or false"):
        load_tokenizer(write_vocab(tmp_path / "badflag", SMALL_VOCAB, {"do_lower_case": "yes"}))
    with pytest.raises(ValueError, match="tokenizer_config.json: model_max_length must be an integer, got '512'"):
        load_tokenizer(write_vocab(tmp_path / "badmax", SMALL_VOCAB, {"model_max_length": "512"}))
    with pytest.raises(ValueError, match="strip_accents must be true, false or null, got 0"):
        load_tokenizer(write_vocab(tmp_path / "badaccents", SMALL_VOCAB, {"strip_accents": 0}))
    with pytest.raises(ValueError, match=r"vocab.txt: vocabulary: missing special token\(s\) <s>"):
        load_tokenizer(write_vocab(tmp_path / "badspecial", SMALL_VOCAB, {"cls_token": "<s>"}))
    with pytest.raises(ValueError, match="lowercase must be True, False or None, got 'yes'"):
        load_tokenizer(write_vocab(tmp_path / "ok", SMALL_VOCAB), lowercase="yes")
    tokenizer = load_tokenizer(tmp_path / "ok")
    with pytest.raises(TypeError, match="text 1 is int, expected str"):
        tokenizer.encode_batch(["fine", 3])
