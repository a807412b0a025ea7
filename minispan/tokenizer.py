"""BERT's WordPiece tokenizer, built from a vocab.txt with the `tokenizers` library.

Gives the WordPiece ids and, for every token, its character span in the ORIGINAL text (so that a predicted token span
can be cut out of the context exactly), for a whole batch of texts at once, in Rust. See docs/02-features.md.
"""
import logging
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from minispan.files import atomic_write, read_json_object, write_json

logger = logging.getLogger("minispan")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
ROLES = ("pad", "unk", "cls", "sep")  # their names in special_tokens_map.json: pad_token, ...


class Encoding:
    """One text's tokens. Each field is converted from Rust to Python lists on first use, and only then:
    build_features needs just the ids of a question, for example."""

    def __init__(self, encoding):
        self._encoding = encoding  # a tokenizers.Encoding

    ids = cached_property(lambda self: self._encoding.ids)
    offsets = cached_property(lambda self: self._encoding.offsets)  # (start, end) characters of each token in the text
    tokens = cached_property(lambda self: self._encoding.tokens)
    word_ids = cached_property(lambda self: self._encoding.word_ids)  # each token's word (split at spaces, punctuation)


class WordPieceTokenizer:
    def __init__(self, vocab, lowercase=False, strip_accents=None, *, special=SPECIAL_TOKENS, model_max_length=None):
        """`vocab` maps token -> id. `strip_accents=None` means: strip them exactly when lower-casing, as BERT does.
        `special`: how the checkpoint spells [PAD] [UNK] [CLS] [SEP]; model_max_length: its tokenizer's, if any."""
        missing = [t for t in special if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary: missing special token(s) {', '.join(missing)}")
        self.vocab = dict(vocab)
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.special, self.model_max_length = tuple(special), model_max_length
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id = (self.vocab[t] for t in special)
        # The ids the model needs embeddings for: one more than the largest. (More than the number of tokens
        # when vocab.txt repeats a line: the repeat's first line keeps an id that no token maps to.)
        self.vocab_size = max(self.vocab.values()) + 1

        self._tokenizer = Tokenizer(models.WordPiece(self.vocab, unk_token=special[1], max_input_chars_per_word=100))
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents, lowercase=self.lowercase)
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # A special token written in the text is that token, as in transformers' tokenizers (and [MASK] too).
        self._tokenizer.add_special_tokens([*special, *(["[MASK]"] if "[MASK]" in vocab else [])])
        # No post-processor: callers lay out [CLS] question [SEP] context [SEP] themselves.

    def encode(self, text):
        return self.encode_batch([text])[0]

    def encode_batch(self, texts):
        """Tokenize many texts at once (in parallel, in Rust). Returns one Encoding per text."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch: text {i} is {type(text).__name__}, expected str")
        return [Encoding(e) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def tokenize(self, text):
        return self.encode(text).tokens

    def convert_ids_to_tokens(self, ids):
        return [self._tokenizer.id_to_token(i) for i in ids]

    def save(self, directory):
        """Write vocab.txt (one token per line, in id order) and tokenizer_config.json, atomically."""
        tokens = {i: token for token, i in self.vocab.items()}
        with atomic_write(Path(directory) / "vocab.txt") as f:
            # Line i is id i: an id no token maps to gets a line no text tokenizes to (it holds spaces).
            f.writelines(tokens.get(i, f"[unused id {i}]") + "\n" for i in range(self.vocab_size))
        config = {"do_lower_case": self.lowercase, "strip_accents": self.strip_accents,
                  "tokenizer_class": "BertTokenizer", **{f"{r}_token": t for r, t in zip(ROLES, self.special)}}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        write_json(Path(directory) / "tokenizer_config.json", config)


def read_vocab(path):
    """vocab.txt: one token per line; a token's id is its line number (counting from 0)."""
    try:
        with open(path, encoding="utf-8") as f:  # a repeated line: the last one wins, as in BERT's load_vocab
            vocab = {line.rstrip("\n").rstrip("\r"): index for index, line in enumerate(f)}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary")
    return vocab


def load_tokenizer(path, lowercase=None):
    """Load a tokenizer from a model directory holding vocab.txt, or from a vocab file. tokenizer_config.json and
    special_tokens_map.json beside it are read as transformers 4.x's AutoTokenizer reads them, so that the ids are the
    checkpoint's: do_lower_case (default true, BertTokenizer's: SpanBERT's folder says false), strip_accents,
    model_max_length and the special tokens' spellings. `lowercase`, when given, overrides do_lower_case."""
    if lowercase is not None and not isinstance(lowercase, bool):
        raise ValueError(f"load_tokenizer: lowercase must be True, False or None, got {lowercase!r}")
    path = Path(path)
    vocab_file = path / "vocab.txt" if path.is_dir() else path
    if not vocab_file.is_file():
        raise FileNotFoundError(f"{vocab_file}: no vocabulary (expected a directory with vocab.txt, or a vocab file)")
    config_file, map_file = vocab_file.parent / "tokenizer_config.json", vocab_file.parent / "special_tokens_map.json"
    config = read_json_object(config_file) if config_file.is_file() else {}
    # special_tokens_map.json's spellings win, unless tokenizer_config.json lists its tokens (newer saves).
    spelled = read_json_object(map_file) if map_file.is_file() and "added_tokens_decoder" not in config else {}
    special = [{**config, **spelled}.get(f"{role}_token", default) for role, default in zip(ROLES, SPECIAL_TOKENS)]
    special = [token.get("content") if isinstance(token, dict) else token for token in special]  # AddedToken's
    fields = {"do_lower_case": (bool, "true or false"), "strip_accents": (bool, "true, false or null"),
              "model_max_length": (int, "an integer")}
    for field, (kind, expected) in fields.items():
        if not isinstance(config.get(field), (kind, type(None))):
            raise ValueError(f"{config_file}: {field} must be {expected}, got {config[field]!r}")
    if not all(isinstance(token, str) for token in special):
        raise ValueError(f"{map_file if spelled else config_file}: special tokens must be strings, got {special}")
    given, lowercase = lowercase, config.get("do_lower_case", True) if lowercase is None else lowercase
    vocab = read_vocab(vocab_file)
    words = [token for token in vocab if not (token.startswith("[") and token.endswith("]"))]
    if lowercase and given is None and sum(token != token.lower() for token in words) >= 0.01 * len(words):
        # transformers#3823, biobert#163: a cased model fed lower-cased text loses accuracy, silently.
        why = "its tokenizer_config.json says do_lower_case true" if "do_lower_case" in config else \
            "no tokenizer_config.json says do_lower_case false (BertTokenizer's default)"
        logger.warning("%s: a cased vocabulary, read lower-cased because %s, as transformers 4.x reads it; pass "
                       "lowercase=False if the model was trained on cased text", vocab_file, why)
    try:
        return WordPieceTokenizer(vocab, lowercase, config.get("strip_accents"), special=special,
                                  model_max_length=config.get("model_max_length"))
    except ValueError as e:  # missing special tokens: say which file lacks them
        raise ValueError(f"{vocab_file}: {e}") from None
