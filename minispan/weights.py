"""Checkpoints in and out: a checkpoint's names (transformers', BERT's or fairseq's) mapped to ours, load_model and
save_model. The tensors come from tensor_files.py; the names are explained in docs/03-encoder.md.
"""
import logging
import re
from pathlib import Path

import torch

from minispan.config import BertConfig
from minispan.model import BertForQuestionAnswering
from minispan.tensor_files import WeightsError, load_state_dict_file, save_safetensors

logger = logging.getLogger("minispan")

# Pretraining heads (MLM, NSP, SpanBERT's span-boundary head live under cls.), the NSP pooler and
# the position_ids buffer some transformers versions save: present in checkpoints, unused for spans.
IGNORED = re.compile(r"^(cls|pooler)\.|position_ids$")

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
CONFIG_NAMES = ("config.json", "bert_config.json")  # the second: the original BERT/SpanBERT releases


def map_state_dict(state_dict):
    """Rename a checkpoint's keys to ours; returns (mapped, ignored_keys). Handles, in any combination: a `bert.` prefix
    or none (a plain BertModel checkpoint), the TF-era LayerNorm.gamma/beta for .weight/.bias, and fairseq's `decoder.`
    prefix (SpanBERT was pretrained in fairseq, which wraps the whole model in `decoder`). qa_outputs.* is the head."""
    mapped, source, ignored = {}, {}, []
    for key, tensor in state_dict.items():
        name = key.removeprefix("decoder.").removeprefix("bert.")
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if IGNORED.search(name):
            ignored.append(key)
            continue
        if not name.startswith("qa_outputs."):
            name = "bert." + name
        if name in mapped:
            raise WeightsError(f"checkpoint keys {source[name]!r} and {key!r} both map to {name!r}")
        mapped[name], source[name] = tensor, key
    return mapped, ignored


def load_model(path, device=None, dtype=None):
    """Load a BertForQuestionAnswering from a directory with config.json and model.safetensors or pytorch_model.bin.
    A checkpoint without a span head gets a fresh one (and says so). dtype (e.g. torch.bfloat16) converts the
    floating-point weights. Returns the model in eval mode."""
    config_file, weights_file = model_files(path, dtype)
    config = BertConfig.from_json(config_file)
    state, ignored = map_state_dict(load_state_dict_file(weights_file))
    if ignored:
        logger.info("%s: ignored %d keys not used for span prediction: %s", weights_file, len(ignored),
                    _preview(ignored))
    check_sizes(state, config, weights_file, config_file)
    # Build the model where it will run, with BERT's random init (so a checkpoint without a span head already has
    # a fresh one), then copy the checkpoint in: load_state_dict casts each tensor to its parameter's device and dtype.
    with torch.device(device if device is not None else "cpu"):
        model = BertForQuestionAnswering(config)
    if dtype is not None:
        model.to(dtype)  # floating-point tensors only
    fresh_head = not any(name.startswith("qa_outputs.") for name in state)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()
                if not (fresh_head and name.startswith("qa_outputs."))}
    check_shapes(state, expected, weights_file, config_file, every_key=True)
    model.load_state_dict(state, strict=False)  # strict=False: only a wholly absent span head, checked above
    if fresh_head:
        logger.warning("%s has no span head (qa_outputs): initialised a fresh one; fine-tune before use", weights_file)
    return model.eval()


def model_files(path, dtype):
    """(config file, weights file) of a model directory; dtype checked."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"load_model: dtype must be a floating-point torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    path = Path(path)
    if not path.is_dir():
        raise WeightsError(f"{path}: expected a directory holding config.json and model.safetensors "
                           "or pytorch_model.bin")
    return _first_existing(path, CONFIG_NAMES), _first_existing(path, WEIGHTS_NAMES)


def check_sizes(state, config, weights_file, config_file):
    """Before a model is built from config.json, compare its sizes with the checkpoint, so that a config claiming a
    huge model is refused instead of filling memory: the layer count, and the four matrices shaped by its sizes."""
    unknown = [name for name in state if not re.match(r"bert\.(embeddings|encoder\.layer\.\d+)\.|qa_outputs\.", name)]
    if unknown:  # e.g. DDP's module. or torch.compile's _orig_mod. prefix: say so rather than count no layers
        raise WeightsError(f"{weights_file}: does not fit the model in {config_file.name}: unexpected keys "
                           f"{_preview(unknown)}")
    layers = {m.group(1) for name in state if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", name))}
    if len(layers) != config.num_hidden_layers:
        raise WeightsError(f"{weights_file}: holds {len(layers)} encoder layers but {config_file.name} "
                           f"says num_hidden_layers={config.num_hidden_layers}")
    c = config
    check_shapes(state, {"bert.embeddings.word_embeddings.weight": (c.vocab_size, c.hidden_size),
                         "bert.embeddings.position_embeddings.weight": (c.max_position_embeddings, c.hidden_size),
                         "bert.embeddings.token_type_embeddings.weight": (c.type_vocab_size, c.hidden_size),
                         "bert.encoder.layer.0.intermediate.dense.weight": (c.intermediate_size, c.hidden_size)},
                 weights_file, config_file)


def check_shapes(state, expected, weights_file, config_file, every_key=False):
    """Each tensor named in `expected` is in the checkpoint's `state`, with the expected shape; with every_key,
    nothing else is."""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected] if every_key else []
    problems = [f"{what} keys {_preview(names)}" for what, names in (("missing", missing), ("unexpected", unexpected))
                if names]
    if problems:
        raise WeightsError(f"{weights_file}: does not fit the model in {config_file.name}: {'; '.join(problems)}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise WeightsError(f"{weights_file}: {name} has shape {tuple(state[name].shape)} in the checkpoint "
                               f"but {shape} in {config_file.name}")
        if not state[name].dtype.is_floating_point:  # I32 for F32 has the same size, and would be cast silently
            raise WeightsError(f"{weights_file}: {name} has dtype {state[name].dtype}, expected a floating-point one")


def save_model(model, directory):
    """Write config.json + model.safetensors with transformers' key names, atomically. Pass the
    BertForQuestionAnswering itself, not a DDP or torch.compile wrapper (whose keys carry `module.` / `_orig_mod.`)."""
    if not isinstance(model, BertForQuestionAnswering):
        raise TypeError(f"save_model expects a BertForQuestionAnswering, got {type(model).__name__} "
                        "(unwrap DDP with .module, torch.compile with ._orig_mod)")
    save_safetensors(model.state_dict(), Path(directory) / "model.safetensors")
    model.config.to_json(Path(directory) / "config.json")


def _first_existing(directory, names):
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise WeightsError(f"{directory}: none of {', '.join(names)} found")


def _preview(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
