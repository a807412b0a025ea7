"""BERT's WordPiece tokenizer, built from a vocab.txt with the `tokenizers` library.

We need two things from the tokenizer: the WordPiece ids, and for every token the span of characters it
came from in the ORIGINAL text (so that a predicted token span can be cut out of the context exactly).
`tokenizers` gives both, in Rust, for a whole batch of texts at once.

BERT tokenizes in three steps, which map one to one onto `tokenizers` components:
  1. normalize: drop control characters, map white space to " ", put spaces around CJK characters and,
     for uncased models only, lower-case and strip accents (SpanBERT is cased: it does neither);
  2. pre-tokenize: split on white space and around every punctuation character;
  3. WordPiece: split each word greedily into the longest vocabulary pieces ("playing" -> "play", "##ing");
     a word with no such split, or longer than 100 characters, becomes [UNK].
"""
import logging
from functools import cached_property
from pathlib import Path
from typing import List, Tuple

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from minispan.files import atomic_write, read_json_object, write_json

logger = logging.getLogger("minispan")

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class Encoding:
    """One text's tokens. Each field is converted from Rust to Python lists on first use, and only then:
    build_features needs just the ids of a question, for example."""

    def __init__(self, encoding):
        self._encoding = encoding  # a tokenizers.Encoding

    @cached_property
    def ids(self) -> List[int]:
        return self._encoding.ids

    @cached_property
    def offsets(self) -> List[Tuple[int, int]]:
        """(start, end) character span of each token in the original text."""
        return self._encoding.offsets

    @cached_property
    def tokens(self) -> List[str]:
        return self._encoding.tokens

    @cached_property
    def word_ids(self) -> List[int]:
        """Which word (split at white space and punctuation) each token belongs to."""
        return self._encoding.word_ids

    def __repr__(self):
        return f"Encoding(tokens={self.tokens!r}, offsets={self.offsets!r})"


class WordPieceTokenizer:
    def __init__(self, vocab, lowercase=False, strip_accents=None):
        """`vocab` maps token -> id. `strip_accents=None` means: strip them exactly when lower-casing, as BERT does."""
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary: missing special token(s) {', '.join(missing)}")
        self.vocab = dict(vocab)
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        # The ids the model needs embeddings for: one more than the largest. (More than the number of tokens
        # when vocab.txt repeats a line: the repeat's first line keeps an id that no token maps to.)
        self.vocab_size = max(self.vocab.values()) + 1

        self._tokenizer = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents, lowercase=self.lowercase
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # No post-processor: callers lay out [CLS] question [SEP] context [SEP] themselves.

    def encode(self, text):
        return self.encode_batch([text])[0]

    def encode_batch(self, texts):
        """Tokenize many texts at once (in parallel, in Rust). Returns one Encoding per text."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch: text {i} is {type(text).__name__}, expected str")
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [Encoding(e) for e in encodings]

    def tokenize(self, text):
        return self.encode(text).tokens

    def convert_ids_to_tokens(self, ids):
        return [self._tokenizer.id_to_token(i) for i in ids]

    def save(self, directory):
        """Write vocab.txt (one token per line, in id order) and tokenizer_config.json, atomically."""
        directory = Path(directory)
        tokens = {i: token for token, i in self.vocab.items()}
        with atomic_write(directory / "vocab.txt") as f:
            for i in range(self.vocab_size):
                # Line i is id i. An id no token maps to gets a line no text tokenizes to (pre-tokenizing
                # splits on spaces), so that every later token keeps its id.
                f.write(tokens.get(i, f"[unused id {i}]") + "\n")
        config = {
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenizer_class": "BertTokenizer",
        }
        write_json(directory / "tokenizer_config.json", config)


def read_vocab(path):
    """vocab.txt: one token per line; a token's id is its line number (counting from 0)."""
    vocab = {}
    try:
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                token = line.rstrip("\n").rstrip("\r")
                vocab[token] = index  # a repeated line: the last one wins, as in BERT's load_vocab and tokenizers
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary")
    return vocab


def load_tokenizer(path, lowercase=None):
    """Load a tokenizer from a model directory holding vocab.txt, or from a vocab file.

    Lower-casing comes from `lowercase` when given, else from tokenizer_config.json's `do_lower_case` next to
    the vocabulary, else False: SpanBERT is cased, and a cased model fed lower-cased text silently loses accuracy.
    """
    if lowercase is not None and not isinstance(lowercase, bool):
        raise ValueError(f"load_tokenizer: lowercase must be True, False or None, got {lowercase!r}")
    path = Path(path)
    vocab_file = path / "vocab.txt" if path.is_dir() else path
    if not vocab_file.is_file():
        raise FileNotFoundError(f"{vocab_file}: no vocabulary (expected a directory with vocab.txt, or a vocab file)")
    config = {}
    config_file = vocab_file.parent / "tokenizer_config.json"
    if config_file.is_file():
        config = read_json_object(config_file)
    guessed = lowercase is None and "do_lower_case" not in config
    if lowercase is None:
        lowercase = config.get("do_lower_case", False)
    if not isinstance(lowercase, bool):
        raise ValueError(f"{config_file}: do_lower_case must be true or false, got {lowercase!r}")
    strip_accents = config.get("strip_accents")
    if strip_accents is not None and not isinstance(strip_accents, bool):
        raise ValueError(f"{config_file}: strip_accents must be true, false or null, got {strip_accents!r}")
    vocab = read_vocab(vocab_file)
    words = [token for token in vocab if not (token.startswith("[") and token.endswith("]"))]
    if guessed and sum(token != token.lower() for token in words) < 0.01 * len(words):
        # An uncased model read cased turns every capitalised word into [UNK], silently.
        logger.warning("%s: no do_lower_case in a tokenizer_config.json, so text is read cased (as SpanBERT); "
                       "but the vocabulary looks lower-cased: pass lowercase=True, or add tokenizer_config.json "
                       "with {\"do_lower_case\": true}", vocab_file)
    try:
        return WordPieceTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents)
    except ValueError as e:  # missing special tokens: say which file lacks them
        raise ValueError(f"{vocab_file}: {e}") from None
