"""Checkpoint files: the hand-written safetensors reader/writer (oracle: the safetensors package that
transformers depends on), safe .bin loading, name mapping for every layout SpanBERT users meet (written
from the real MiniLM weights; oracle: transformers), save/load round trips, and bad files.
"""
import dataclasses
import json
import logging
import struct

import pytest
import torch

from minispan.config import BertConfig, ConfigError
from minispan.model import BertForQuestionAnswering
from minispan.tensor_files import WeightsError, load_state_dict_file, read_safetensors, save_safetensors
from minispan.weights import load_model, map_state_dict, save_model


# The oracles, imported by the tests that use them: without them those tests skip, the others still run
# (the refused pickle, bad files, name mapping need no oracle).
def transformers():
    return pytest.importorskip("transformers", reason="transformers is the test oracle")


def safetensors_torch():
    return pytest.importorskip("safetensors.torch", reason="safetensors (transformers' dependency) is the oracle")


TINY = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=40)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = BertForQuestionAnswering(TINY)
    with torch.no_grad():  # non-trivial biases and LayerNorms, so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def some_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(-3, 3),
        "i32": torch.arange(5, dtype=torch.int32),
        "u8": torch.arange(3, dtype=torch.uint8),  # odd byte count
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------------------------
# safetensors against the reference implementation


def test_our_safetensors_read_by_reference(tmp_path):
    tensors = some_tensors()
    save_safetensors(tensors, tmp_path / "x.safetensors")
    assert_same_tensors(tensors, safetensors_torch().load_file(tmp_path / "x.safetensors"))
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temp file left behind


def test_reference_safetensors_read_by_us(tmp_path):
    tensors = some_tensors()
    safetensors_torch().save_file(tensors, tmp_path / "x.safetensors", metadata={"format": "pt"})
    assert_same_tensors(tensors, read_safetensors(tmp_path / "x.safetensors"))


def raw_safetensors(path, header, data, header_len=None):
    """Write a file by hand: the format allows (and bad files contain) what our writer never produces."""
    header_bytes = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(header_bytes) if header_len is None else header_len) + header_bytes + data)
    return path


def test_misaligned_tensor_is_read_correctly(tmp_path):
    f32 = torch.tensor([1.5, -2.0, 3.25])
    header = {"odd": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "f32": {"dtype": "F32", "shape": [3], "data_offsets": [3, 15]}}
    # Pad the header so the data section starts 8-aligned: the F32 tensor then starts at byte 3.
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-(len(header_bytes)) % 8)
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + bytes([7, 8, 9]) + f32.numpy().tobytes())
    tensors = read_safetensors(path)
    assert torch.equal(tensors["f32"], f32) and tensors["odd"].tolist() == [7, 8, 9]
    assert_same_tensors(tensors, safetensors_torch().load_file(path))


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4,
     r"data_offsets \[0, 8\] lie outside the 4-byte data section"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [1000, 1008]}}, b"\0" * 8,
     r"tensor 'w': data_offsets \[1000, 1008\] lie outside"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, r"tensors 'w' and 'v' overlap"),
    ({"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, r"tensor 'w': unknown dtype 'F7'"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     r"tensor 'w': 8 bytes for shape \[3\] of F32 \(expected 12\)"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, r"shape must be a list"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, r"data_offsets \[8, 0\] lie outside"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, r"data_offsets must be \[begin, end\], got None"),
    ([1, 2], b"", r"header must be a JSON object"),
])
def test_bad_safetensors_headers(tmp_path, header, data, message):
    path = raw_safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(WeightsError, match=message):
        read_safetensors(path)
    # ... and the reference agrees these files are broken.
    with pytest.raises(Exception):
        safetensors_torch().load_file(path)


@pytest.mark.parametrize("header, message", [
    ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, r"unknown dtype \['F32'\]"),  # was TypeError
    ({"w": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, r"together below 2\*\*62"),
    ({"w": {"dtype": "F32", "shape": [0, 2**61, 2**61], "data_offsets": [0, 0]}}, r"together below 2\*\*62"),
    ("[" * 100_000 + "]" * 100_000, r"header is not valid JSON"),  # was RecursionError
])
def test_hostile_safetensors_headers_are_one_line_errors(tmp_path, header, message):
    """Headers that used to escape as TypeError, RuntimeError (stride overflow) or RecursionError."""
    text = header if isinstance(header, str) else json.dumps(header)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + b"\0" * 4)
    with pytest.raises(WeightsError, match=message):
        read_safetensors(path)


def test_truncated_and_garbage_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_safetensors({"w": torch.randn(64, 64), "b": torch.randn(64)}, good)
    blob = good.read_bytes()
    cases = {
        len(blob) - 100: r"lie outside the .*-byte data section: truncated",  # cut inside the data
        40: r"header length \d+ runs past the end of the file \(40 bytes\)",  # cut inside the header
        5: r"truncated safetensors file \(5 bytes",
    }
    for size, message in cases.items():
        path = tmp_path / f"cut{size}.safetensors"
        path.write_bytes(blob[:size])
        with pytest.raises(WeightsError, match=message):
            load_state_dict_file(path)
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{oops}")
    with pytest.raises(WeightsError, match="header is not valid JSON"):
        read_safetensors(path)


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin


class RunsCode:
    """Unpickling this creates a file: what a malicious checkpoint would do (with worse code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "model").mkdir()
    TINY.to_json(tmp_path / "model" / "config.json")
    path = tmp_path / "model" / "pytorch_model.bin"
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2), "payload": RunsCode(marker)}, path)
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin: refused: .*could run code\): .*GLOBAL") as error:
        load_model(tmp_path / "model")
    assert "weights_only" not in str(error.value)  # not torch's advice to unpickle it anyway
    assert not marker.exists()
    # The payload is real: a plain unpickle runs it (this is what load_model must never do).
    torch.load(path, weights_only=False).get("payload").close()
    assert marker.exists()


@pytest.mark.parametrize("zipfile_format", [True, False], ids=["zip", "legacy"])
def test_bin_round_trip(tmp_path, zipfile_format):
    tensors = some_tensors()
    torch.save(tensors, tmp_path / "x.bin", _use_new_zipfile_serialization=zipfile_format)
    assert_same_tensors(tensors, load_state_dict_file(tmp_path / "x.bin"))


def test_bad_bin_files(tmp_path):
    torch.save({"w": torch.zeros(3), "step": 5}, tmp_path / "a.bin")
    with pytest.raises(WeightsError, match=r"a\.bin: entry 'step' is a int, expected a tensor"):
        load_state_dict_file(tmp_path / "a.bin")
    torch.save({1: torch.zeros(3)}, tmp_path / "k.bin")  # was an AttributeError in the name mapping
    with pytest.raises(WeightsError, match=r"k\.bin: key 1 is a int, expected a parameter name"):
        load_state_dict_file(tmp_path / "k.bin")
    torch.save([torch.zeros(3)], tmp_path / "b.bin")
    with pytest.raises(WeightsError, match=r"b\.bin: expected a dict of tensors, got list"):
        load_state_dict_file(tmp_path / "b.bin")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "c.bin")
    (tmp_path / "c.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:300])
    with pytest.raises(WeightsError, match=r"c\.bin: not a readable PyTorch checkpoint"):
        load_state_dict_file(tmp_path / "c.bin")
    (tmp_path / "d.bin").write_bytes(bytes(range(256)) * 4)  # garbage: refused, without torch's advice
    with pytest.raises(WeightsError, match=r"d\.bin: refused: not a plain tensor checkpoint \(corrupt") as error:
        load_state_dict_file(tmp_path / "d.bin")
    assert "weights_only" not in str(error.value)
    with pytest.raises(WeightsError, match=r"unknown checkpoint format"):
        load_state_dict_file(tmp_path / "x.ckpt")


# ---------------------------------------------------------------------------------------------
# name mapping


def test_map_state_dict_layouts():
    t = torch.zeros(1)
    mapped, ignored = map_state_dict({
        "embeddings.word_embeddings.weight": t,  # plain BertModel
        "bert.encoder.layer.0.output.LayerNorm.gamma": t,  # original release
        "decoder.bert.encoder.layer.0.output.LayerNorm.beta": t,  # fairseq
        "decoder.encoder.layer.1.attention.self.query.bias": t,
        "qa_outputs.weight": t,
        "embeddings.position_ids": t, "bert.embeddings.position_ids": t,
        "pooler.dense.weight": t, "bert.pooler.dense.bias": t,
        "cls.predictions.bias": t, "decoder.cls.pair_target_predictions.decoder.weight": t,
    })
    assert list(mapped) == ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.LayerNorm.weight",
                            "bert.encoder.layer.0.output.LayerNorm.bias",
                            "bert.encoder.layer.1.attention.self.query.bias", "qa_outputs.weight"]
    assert ignored == ["embeddings.position_ids", "bert.embeddings.position_ids", "pooler.dense.weight",
                       "bert.pooler.dense.bias", "cls.predictions.bias",
                       "decoder.cls.pair_target_predictions.decoder.weight"]
    with pytest.raises(WeightsError, match=r"'bert.x.LayerNorm.gamma' and 'x.LayerNorm.weight' both map to"):
        map_state_dict({"bert.x.LayerNorm.gamma": t, "x.LayerNorm.weight": t})


def write_checkpoint(directory, state_dict, fmt="safetensors", config=TINY):
    directory.mkdir(parents=True, exist_ok=True)
    config.to_json(directory / "config.json")
    if fmt == "safetensors":
        save_safetensors(state_dict, directory / "model.safetensors")
    else:
        torch.save(state_dict, directory / "pytorch_model.bin", _use_new_zipfile_serialization=(fmt == "bin"))
    return directory


def test_mapping_errors_name_the_keys(tmp_path):
    good = tiny_model().state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "bert.encoder.layer.1.output.dense.bias"},
         r"missing keys bert\.encoder\.layer\.1\.output\.dense\.bias"),
        ({**good, "bert.encoder.layer.1.output.extra.bias": torch.zeros(32)},
         r"unexpected keys bert\.encoder\.layer\.1\.output\.extra\.bias"),
        ({**good, "bert.encoder.layer.2.output.dense.bias": torch.zeros(32)},
         r"model\.safetensors: holds 3 encoder layers but config\.json says num_hidden_layers=2"),
        ({**good, "bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(36, 32)},
         r"bert\.encoder\.layer\.0\.intermediate\.dense\.weight has shape \(36, 32\) in the checkpoint "
         r"but \(37, 32\) in config\.json"),
        ({k: v for k, v in good.items() if k != "qa_outputs.bias"}, r"missing keys qa_outputs\.bias"),
        ({"module." + k: v for k, v in good.items()},  # saved through DistributedDataParallel
         r"does not fit the model in config\.json: unexpected keys bert\.module\.bert\.embeddings"),
    ]
    for i, (state, message) in enumerate(cases):
        with pytest.raises(WeightsError, match=message):
            load_model(write_checkpoint(tmp_path / str(i), state))


def test_config_is_checked_against_the_weights_before_allocating(tmp_path):
    # A config.json claiming a huge model must be refused from the checkpoint's shapes, not by trying to
    # allocate it: a billion layers, or 2 layers 131,072 wide (about 1 TB of float32 weights), each
    # against the tiny 2-layer checkpoint.
    state = tiny_model().state_dict()
    deep = dataclasses.replace(TINY, num_hidden_layers=10**9)
    with pytest.raises(WeightsError, match=r"holds 2 encoder layers but config\.json says "
                                           r"num_hidden_layers=1000000000"):
        load_model(write_checkpoint(tmp_path / "deep", state, config=deep))
    wide = dataclasses.replace(TINY, hidden_size=2**17, intermediate_size=2**17)
    with pytest.raises(WeightsError, match=r"has shape \(99, 32\) in the checkpoint but \(99, 131072\)"):
        load_model(write_checkpoint(tmp_path / "wide", state, config=wide))


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(WeightsError, match="expected a directory holding config.json"):
        load_model(tmp_path / "nowhere")
    TINY.to_json(tmp_path / "config.json")
    with pytest.raises(WeightsError, match="none of model.safetensors, pytorch_model.bin found"):
        load_model(tmp_path)
    save_safetensors(tiny_model().state_dict(), tmp_path / "model.safetensors")
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["num_attention_heads"], raw["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"config\.json: missing required field\(s\) num_attention_heads, "
                                          r"intermediate_size"):
        load_model(tmp_path)


def test_a_weight_must_have_a_floating_point_dtype(tmp_path):
    """A header declaring I32 for an F32 weight has the same byte size: every other check passes, and
    load_state_dict would cast the integers' bit patterns into different weights."""
    directory = tmp_path / "m"
    save_model(tiny_model(), directory)
    blob = (directory / "model.safetensors").read_bytes()
    entry = b'"qa_outputs.weight":{"dtype":"F32"'
    assert blob.count(entry) == 1
    (directory / "model.safetensors").write_bytes(blob.replace(entry, entry.replace(b"F32", b"I32")))
    with pytest.raises(WeightsError, match=r"model\.safetensors: qa_outputs\.weight has dtype torch\.int32, "
                                           r"expected a floating-point one"):
        load_model(directory)
    state = {**tiny_model().state_dict(), "bert.embeddings.LayerNorm.bias": torch.zeros(32, dtype=torch.int64)}
    with pytest.raises(WeightsError, match=r"pytorch_model\.bin: bert\.embeddings\.LayerNorm\.bias has dtype "
                                           r"torch\.int64"):
        load_model(write_checkpoint(tmp_path / "bin", state, fmt="bin"))


def test_truncated_checkpoint_in_model_dir(tmp_path):
    directory = tmp_path / "m"
    save_model(tiny_model(), directory)
    blob = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors: tensor .* lie outside .* truncated"):
        load_model(directory)


# ---------------------------------------------------------------------------------------------
# save_model / load_model round trips through transformers


def logits(model, input_ids, attention_mask):
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return torch.stack([out.start_logits, out.end_logits])


def tiny_inputs():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 99, (2, 13), generator=g)
    mask = torch.ones_like(input_ids)
    mask[1, 8:] = 0
    return input_ids, mask


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_round_trip_minispan_transformers_minispan(tmp_path, safe_serialization):
    model = tiny_model()
    save_model(model, tmp_path / "ours")
    hf = transformers().BertForQuestionAnswering.from_pretrained(tmp_path / "ours").eval()
    inputs = tiny_inputs()
    # measured max |diff| 2.4e-7 (same weights, transformers' kernels)
    torch.testing.assert_close(logits(hf, *inputs), logits(model, *inputs), rtol=0, atol=1e-5)
    hf.save_pretrained(tmp_path / "theirs", safe_serialization=safe_serialization)
    back = load_model(tmp_path / "theirs")
    assert back.config == model.config
    assert torch.equal(logits(back, *inputs), logits(model, *inputs))  # identical: same weights, same code
    assert_same_tensors(back.state_dict(), model.state_dict())


def test_load_model_dtype_and_training_ready(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path)
    bf16 = load_model(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    inputs = tiny_inputs()
    # bf16 weights and activations; measured max |diff| 0.009 on logits up to 1.03
    torch.testing.assert_close(logits(bf16, *inputs).float(), logits(model, *inputs), rtol=0, atol=0.03)
    for wrong in ("bfloat16", torch.int8):  # a string was taken for a device name by nn.Module.to
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
            load_model(tmp_path, dtype=wrong)
    loaded = load_model(tmp_path)
    assert not loaded.training
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    loaded.train()(*inputs, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 2])).loss.backward()
    assert all(p.grad is not None for p in loaded.parameters())


# ---------------------------------------------------------------------------------------------
# the real pretrained weights (MiniLM-L6-H384, a BertModel checkpoint) in every layout

LAYOUTS = ["bertmodel", "original-release", "hub-copy", "finetuned-qa", "fairseq"]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """(the encoder's tensors as shipped, the config, transformers' model: the oracle)."""
    base = safetensors_torch().load_file(minilm_dir / "model.safetensors")
    hf = transformers().BertForQuestionAnswering.from_pretrained(minilm_dir).eval()
    return base, BertConfig.from_json(minilm_dir / "config.json"), hf


def gamma_beta(name):
    return name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")


def pretraining_heads(config, g):
    H, V = config.hidden_size, config.vocab_size
    return {"cls.predictions.bias": torch.zeros(V), "cls.predictions.transform.dense.weight": torch.randn(H, H, generator=g),
            "cls.predictions.transform.LayerNorm.weight": torch.ones(H), "cls.seq_relationship.weight": torch.randn(2, H, generator=g),
            "cls.pair_target_predictions.position_embeddings.weight": torch.randn(200, H, generator=g)}


def write_layout(layout, base, config, directory):
    """Write the real weights the way each kind of checkpoint stores them. Returns (dir, qa head or None)."""
    g = torch.Generator().manual_seed(0)
    encoder = {k: v for k, v in base.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    head = {"qa_outputs.weight": torch.randn(2, config.hidden_size, generator=g) * 0.05,
            "qa_outputs.bias": torch.tensor([0.1, -0.2])}
    if layout == "original-release":  # spanbert_hf_base.tar.gz: bert. + gamma/beta + MLM/NSP/SBO heads, .bin
        state = {gamma_beta("bert." + k): v for k, v in encoder.items()} | pretraining_heads(config, g)
        return write_checkpoint(directory, state, "bin", config), None
    if layout == "hub-copy":  # SpanBERT/spanbert-base-cased: BertForPreTraining names, old-style .bin
        state = {"bert." + k: v for k, v in base.items()} | pretraining_heads(config, g)
        return write_checkpoint(directory, state, "bin-legacy", config), None
    if layout == "finetuned-qa":  # mrm8488/spanbert-finetuned-squadv2: transformers' QA names
        return write_checkpoint(directory, {"bert." + k: v for k, v in encoder.items()} | head, config=config), head
    if layout == "fairseq":  # fairseq's decoder. wrapper around the pretraining model
        state = {"decoder." + gamma_beta("bert." + k): v for k, v in encoder.items()}
        state |= {"decoder." + k: v for k, v in pretraining_heads(config, g).items()}
        return write_checkpoint(directory, state, "bin", config), None
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_real_weights_in_every_layout_match_transformers(minilm, minilm_dir, tmp_path, layout, caplog):
    base, config, hf = minilm
    caplog.set_level(logging.INFO, logger="minispan")
    if layout == "bertmodel":  # as shipped: no prefix, pooler.*, position_ids, model.safetensors
        directory, head = minilm_dir, None
    else:
        directory, head = write_layout(layout, base, config, tmp_path / layout)
    torch.manual_seed(0)
    model = load_model(directory)
    if head is None:
        assert "has no span head (qa_outputs): initialised a fresh one" in caplog.text
        assert abs(model.qa_outputs.weight.std().item() - config.initializer_range) < 0.005  # BERT's init
        assert torch.all(model.qa_outputs.bias == 0)
        head = {"qa_outputs." + k: v for k, v in model.qa_outputs.state_dict().items()}
    else:
        assert "initialised a fresh one" not in caplog.text
        assert torch.equal(model.qa_outputs.weight, head["qa_outputs.weight"])
    if layout != "finetuned-qa":
        assert "ignored" in caplog.text and ("pooler.dense.weight" in caplog.text or "cls." in caplog.text)
    hf.qa_outputs.load_state_dict({k.removeprefix("qa_outputs."): v for k, v in head.items()})
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1000, config.vocab_size, (2, 24), generator=g)
    input_ids[:, 0], input_ids[1, 15:] = 101, 0  # [CLS] ..., the second row padded
    mask = (input_ids != 0).long()
    # measured max |diff|: 1.1e-6 finetuned-qa (logits up to 1.3), <= 4.6e-7 the others (fresh heads, logits ~0.5)
    torch.testing.assert_close(logits(model, input_ids, mask), logits(hf, input_ids, mask), rtol=0, atol=1e-5)


def test_original_release_config_name(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path)
    (tmp_path / "config.json").rename(tmp_path / "bert_config.json")  # the original BERT/SpanBERT file name
    assert_same_tensors(load_model(tmp_path).state_dict(), model.state_dict())


def test_save_model_refuses_wrappers(tmp_path):
    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside: a .module
        def __init__(self, module):
            super().__init__()
            self.module = module
    with pytest.raises(TypeError, match="expects a BertForQuestionAnswering, got Wrapper"):
        save_model(Wrapper(tiny_model()), tmp_path)
