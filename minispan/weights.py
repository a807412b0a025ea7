"""Checkpoints in and out: safetensors by hand, pytorch_model.bin safely, and checkpoint name mapping.

safetensors layout: an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw
little-endian tensor bytes, offsets counted from the end of the header.

pytorch_model.bin is a pickle, and unpickling can run arbitrary code: we only ever read it with
torch.load(weights_only=True), which refuses anything but tensors and plain containers.
"""
import json
import logging
import math
import mmap
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

from minispan.config import BertConfig
from minispan.files import atomic_write
from minispan.model import BertForQuestionAnswering

logger = logging.getLogger("minispan")

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class WeightsError(ValueError):
    """A checkpoint file we refuse to read, or whose tensors don't fit the model."""


# ---------------------------------------------------------------------------------------------
# safetensors


def read_safetensors(path):
    """Read a .safetensors file into {name: tensor} without copying the data into memory.

    The file is memory-mapped and each tensor is a view of the mapping (torch.frombuffer, which keeps
    the mapping alive), so the bytes are read from disk when used and live in the page cache, not in a
    second in-memory copy: load_model copies them straight into the model's parameters.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes, no header length)")
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise WeightsError(f"{path}: header length {header_len} runs past the end of the file "
                               f"({size} bytes): truncated, or not a safetensors file")
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, RecursionError) as e:  # not UTF-8 or not JSON, an integer too long, nesting too deep
            raise WeightsError(f"{path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise WeightsError(f"{path}: header must be a JSON object")
        header.pop("__metadata__", None)
        data_start, data_size = 8 + header_len, size - 8 - header_len
        entries = sorted(((*_check_entry(path, name, info, data_size), name) for name, info in header.items()),
                         key=lambda entry: entry[:2])
        for (begin, _, _, _, name), (_, prev_end, _, _, prev_name) in zip(entries[1:], entries):
            if begin < prev_end:
                raise WeightsError(f"{path}: tensors {prev_name!r} and {name!r} overlap in the file")
        # ACCESS_COPY: a private, writable mapping (torch.frombuffer wants a writable buffer);
        # nothing is ever written back to the file.
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for begin, end, dtype, shape, name in entries:
        offset = data_start + begin
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif offset % dtype.itemsize == 0:
            tensors[name] = torch.frombuffer(buffer, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                             offset=offset).view(shape)
        else:  # misaligned in the file (allowed by the format): copy into aligned memory
            raw = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=offset)
            tensors[name] = raw.clone().view(dtype).view(shape)
    return {name: tensors[name] for name in header}  # the file's key order


def _check_entry(path, name, info, data_size):
    """Validate one header entry; return (begin, end, dtype, shape)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise WeightsError(f"{where}: header entry must be an object")
    dtype = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
    if dtype is None:
        raise WeightsError(f"{where}: unknown dtype {info.get('dtype')!r} (expected one of {', '.join(DTYPES)})")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    # Sizes (and, past a zero dimension, strides) must fit torch's 64-bit integers.
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape) and _is_count(math.prod(filter(None, shape)))):
        raise WeightsError(f"{where}: shape must be a list of non-negative integers, together below 2**62, "
                           f"got {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise WeightsError(f"{where}: data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise WeightsError(f"{where}: data_offsets [{begin}, {end}] lie outside the {data_size}-byte data "
                           "section: truncated or corrupt file")
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise WeightsError(f"{where}: {end - begin} bytes for shape {shape} of {info['dtype']} "
                           f"(expected {expected})")
    return begin, end, dtype, tuple(shape)


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**62


def save_safetensors(tensors, path):
    """Write {name: tensor} as a .safetensors file, atomically."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    # Widest dtypes first: with an 8-byte-aligned data section every tensor then starts aligned.
    for name in sorted(tensors, key=lambda n: -tensors[n].element_size()):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in DTYPE_NAMES:
            raise WeightsError(f"{path}: tensor {name!r} has dtype {t.dtype}, which safetensors cannot hold here")
        blob = t.reshape(-1).view(torch.uint8).numpy()  # raw bytes, little-endian on every torch platform
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + blob.nbytes]}
        blobs.append(blob)
        offset += blob.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # pad with spaces so the data starts 8-byte aligned
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


# ---------------------------------------------------------------------------------------------
# any checkpoint file


def read_torch_bin(path):
    """Read a pytorch_model.bin with torch.load(weights_only=True): a pickle that would run code is refused."""
    # mmap (zip-format checkpoints only) maps the tensors instead of reading them all into memory.
    state_dict = torch_load(path, mmap=zipfile.is_zipfile(path))
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise WeightsError(f"{path}: key {key!r} is a {type(key).__name__}, expected a parameter name")
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    return dict(state_dict)


def torch_load(path, mmap=False):
    """torch.load(weights_only=True) of a file a user hands over: what it refuses or cannot read is one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch wraps the detail that matters ("GLOBAL posix.system ...", "Unsupported operand 8") in advice
        # to load with weights_only=False, which is exactly what must not be done here: keep the detail.
        lines = [line.strip() for line in str(e).splitlines()
                 if line.strip() and not line.strip().startswith("Check the documentation")]
        detail = lines[-1].split("WeightsUnpickler error:")[-1].split(". Please")[0].strip() if lines else ""
        raise WeightsError(f"{path}: refused: not a plain tensor checkpoint (corrupt, or holding objects whose "
                           f"unpickling could run code): {detail}") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({e or 'it ends too soon'})") from None


def load_state_dict_file(path):
    """{name: tensor} from a .safetensors file or a PyTorch .bin/.pt/.pth, read safely."""
    suffix = Path(path).suffix
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".bin", ".pt", ".pth"):
        return read_torch_bin(path)
    raise WeightsError(f"{path}: unknown checkpoint format (expected .safetensors, .bin, .pt or .pth)")


# ---------------------------------------------------------------------------------------------
# name mapping

# Pretraining heads (MLM, NSP, SpanBERT's span-boundary head live under cls.), the NSP pooler and
# the position_ids buffer some transformers versions save: present in checkpoints, unused for spans.
IGNORED = re.compile(r"^(cls|pooler)\.|position_ids$")


def map_state_dict(state_dict):
    """Rename a checkpoint's keys to ours. Returns (mapped, ignored_keys).

    Handles, in any combination: a `bert.` prefix or none (a plain BertModel checkpoint), the
    TF-era LayerNorm.gamma/beta for .weight/.bias, and fairseq's `decoder.` prefix (SpanBERT was
    pretrained in fairseq, which wraps the whole model in `decoder`). qa_outputs.* is the span head.
    """
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


# ---------------------------------------------------------------------------------------------
# models

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
CONFIG_NAMES = ("config.json", "bert_config.json")  # the second: the original BERT/SpanBERT releases


def load_model(path, device=None, dtype=None):
    """Load a BertForQuestionAnswering from a directory with config.json and model.safetensors or
    pytorch_model.bin. A checkpoint without a span head gets a fresh one (and says so).

    dtype (e.g. torch.bfloat16) converts the floating-point weights. Returns the model in eval mode.
    """
    config_file, weights_file = model_files(path, dtype)
    config = BertConfig.from_json(config_file)
    state, ignored = map_state_dict(load_state_dict_file(weights_file))
    if ignored:
        logger.info("%s: ignored %d keys not used for span prediction: %s", weights_file, len(ignored),
                    _preview(ignored))
    check_sizes(state, config, weights_file, config_file)
    # Build the model where it will run, with BERT's random init (so a checkpoint without a span
    # head already has a fresh one), then copy the checkpoint in: load_state_dict casts each tensor to
    # its parameter's device and dtype. The file is memory-mapped (safetensors, zip-format .bin), so
    # its bytes sit in the page cache rather than in a second in-memory copy of the model.
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
        logger.warning("%s has no span head (qa_outputs): initialised a fresh one; fine-tune before use",
                       weights_file)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# load_model's checks: the files are the user's, so every size is compared before memory is spent on it


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
    """Before a model is built from config.json, compare its sizes with the checkpoint, so that a config
    claiming a huge model is refused instead of filling memory: the layer count, and the four matrices
    whose shapes are the config's sizes. The model is then no bigger than the checkpoint."""
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
    """Each tensor named in `expected` is in the checkpoint's `state`, with the expected shape; with
    every_key, nothing else is."""
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected] if every_key else []
    if missing or unexpected:
        problems = ([f"missing keys {_preview(missing)}"] if missing else []) + \
                   ([f"unexpected keys {_preview(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{weights_file}: does not fit the model in {config_file.name}: {'; '.join(problems)}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise WeightsError(f"{weights_file}: {name} has shape {tuple(state[name].shape)} in the checkpoint "
                               f"but {shape} in {config_file.name}")
        if not state[name].dtype.is_floating_point:  # I32 for F32 has the same size, and would be cast silently
            raise WeightsError(f"{weights_file}: {name} has dtype {state[name].dtype}, expected a floating-point one")


def save_model(model, directory):
    """Write config.json + model.safetensors with transformers' key names, atomically.

    Pass the BertForQuestionAnswering itself, not a DistributedDataParallel or torch.compile wrapper
    (their state_dict keys carry `module.` / `_orig_mod.` prefixes).
    """
    if not isinstance(model, BertForQuestionAnswering):
        raise TypeError(f"save_model expects a BertForQuestionAnswering, got {type(model).__name__} "
                        "(unwrap DDP with .module, torch.compile with ._orig_mod)")
    directory = Path(directory)
    save_safetensors(model.state_dict(), directory / "model.safetensors")
    model.config.to_json(directory / "config.json")


def _first_existing(directory, names):
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise WeightsError(f"{directory}: none of {', '.join(names)} found")


def _preview(names, limit=8):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
