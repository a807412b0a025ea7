"""BertConfig: the fields of a BERT config.json, with the names the checkpoints use; defaults are SpanBERT-base (cased:
a 28,996-piece vocabulary). Other keys of a transformers config.json (architectures, model_type, ...) are ignored.
"""
import dataclasses
from dataclasses import dataclass

from minispan.files import read_json_object, write_json


class ConfigError(ValueError):
    """A config.json that cannot describe a BERT we can build."""


@dataclass
class BertConfig:
    vocab_size: int = 28996
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact (erf) GELU, as in BERT; the only activation we implement
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0  # its embedding row gets no gradient (nn.Embedding padding_idx), as in BERT

    # These define the network's shape: a config.json without them cannot be guessed.
    REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

    def __post_init__(self):
        for name in self.REQUIRED + ("max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} is not in the vocabulary (size {self.vocab_size})")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of "
                              f"num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0 <= getattr(self, name) < 1:  # also refuses NaN
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.initializer_range < float("inf"):  # the init's standard deviation
            raise ConfigError(f"initializer_range must be a finite number >= 0, got {self.initializer_range}")
        if not self.layer_norm_eps > 0:  # a zero, negative or NaN epsilon gives NaN outputs
            raise ConfigError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        if self.hidden_act != "gelu":
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (expected 'gelu')")

    @classmethod
    def from_json(cls, path):
        """Read a config.json; extra keys are ignored, missing or mistyped fields are a ConfigError."""
        try:
            raw = read_json_object(path)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        missing = [name for name in cls.REQUIRED if name not in raw]
        if missing:
            raise ConfigError(f"{path}: missing required field(s) {', '.join(missing)}")
        # Checkpoints with relative position embeddings are a different network, not a BERT we load.
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{path}: position_embedding_type {raw['position_embedding_type']!r} "
                              "is not supported (expected 'absolute')")
        values = {}
        for f in dataclasses.fields(cls):
            value = raw.get(f.name)
            if f.name not in raw or (f.name == "pad_token_id" and value is None):  # some write null: keep BERT's 0
                continue
            # JSON true/false must not pass as 1/0 (bool is a subclass of int in Python)
            if isinstance(value, bool) or not isinstance(value, (int, float) if f.type is float else f.type):
                raise ConfigError(f"{path}: field {f.name} must be {f.type.__name__}, got {value!r}")
            values[f.name] = float(value) if f.type is float else value
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_json(self, path):
        """Write config.json atomically, with the keys transformers needs to load it as a BERT QA model."""
        write_json(path, {"architectures": ["BertForQuestionAnswering"], "model_type": "bert",
                          **dataclasses.asdict(self)})
