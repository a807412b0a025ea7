"""Files of named tensors: safetensors by hand, and pytorch_model.bin safely.

safetensors: an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype", "shape", "data_offsets":
[begin, end]}, "__metadata__": {...}}, then the raw little-endian tensor bytes, offsets counted from the header's end.
pytorch_model.bin is a pickle, whose unpickling can run any code: read only with torch.load(weights_only=True).
"""
import json
import math
import mmap
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch

from minispan.files import atomic_write

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
          "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class WeightsError(ValueError):
    """A checkpoint file we refuse to read, or whose tensors don't fit the model."""


def read_safetensors(path):
    """Read a .safetensors file into {name: tensor} without copying the data into memory: each tensor is a view of
    the memory-mapped file (torch.frombuffer keeps the mapping alive), so its bytes are read from disk when used and
    live in the page cache, not in a second copy in memory; load_model copies them straight into the parameters."""
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
        # ACCESS_COPY: private and writable (torch.frombuffer wants a writable buffer); nothing goes back to the file.
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for begin, end, dtype, shape, name in entries:
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=data_start + begin)
        aligned = (data_start + begin) % dtype.itemsize == 0  # else (the format allows it) copy into aligned memory
        tensors[name] = (raw if aligned else raw.clone()).view(dtype).view(shape)
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
        raise WeightsError(f"{where}: {end - begin} bytes for shape {shape} of {info['dtype']} (expected {expected})")
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
        f.writelines([struct.pack("<Q", len(header_bytes)), header_bytes, *blobs])


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
    if suffix not in (".bin", ".pt", ".pth"):
        raise WeightsError(f"{path}: unknown checkpoint format (expected .safetensors, .bin, .pt or .pth)")
    state_dict = torch_load(path, mmap=zipfile.is_zipfile(path))  # mmap (zip-format files only): not read into memory
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(state_dict).__name__}")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise WeightsError(f"{path}: key {key!r} is a {type(key).__name__}, expected a parameter name")
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
    return dict(state_dict)
