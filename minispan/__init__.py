"""minispan: SpanBERT fine-tuned on SQuAD 2.0, from scratch and readable. Data flows one way: JSON -> Example ->
Feature -> padded batch -> (start_logits, end_logits) -> predictions + null odds -> metrics. README.md's tour lists
the modules in that reading order, then the harness around them (command lines, downloads, checks); docs/ is the course.
"""
import importlib
import importlib.util

__version__ = "0.1.0"

# The public names and the module each lives in. They are imported on first use (PEP 562), so that
# `python evaluate.py`, which needs only json and numpy, does not spend seconds importing torch.
_EXPORTS = {"Answer": "squad", "Example": "squad", "SquadFormatError": "squad", "read_squad": "squad",
            "BertConfig": "config", "BertModel": "model", "BertForQuestionAnswering": "model", "load_model": "weights",
            "save_model": "weights", "load_tokenizer": "tokenizer", "Feature": "features", "build_features": "features",
            "postprocess": "postprocess", "pipeline": "answer"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"minispan.{_EXPORTS[name]}"), name)
    elif name.isidentifier() and not name.startswith("__") and importlib.util.find_spec(f"minispan.{name}"):
        # a module: minispan.metrics.squad_v2_metrics (not dunder probes such as __wrapped__)
        value = importlib.import_module(f"minispan.{name}")
    else:
        raise AttributeError(f"module 'minispan' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
