"""The encoder and span head against transformers' BertForQuestionAnswering (test-only oracle), plus
the config file. Tiny random configs, fp32, on CPU.
"""
import dataclasses
import json

import pytest
import torch

from minispan.config import BertConfig, ConfigError
from minispan.model import BertForQuestionAnswering

TINY = [
    dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
         max_position_embeddings=40),
    dict(vocab_size=120, hidden_size=24, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
         max_position_embeddings=32, type_vocab_size=3, layer_norm_eps=1e-5, initializer_range=0.2),
]


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = BertConfig(**{**TINY[0], **overrides})
    return BertForQuestionAnswering(config)


def perturb(model, seed=1):
    """BERT's init leaves biases zero and LayerNorms at 1/0; random values check every weight is used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def transformers_twin(model, attn_implementation="eager"):
    """The transformers model with the same config and the same weights (loaded strictly by name)."""
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    c = model.config
    hf_config = transformers.BertConfig(**dataclasses.asdict(c), attn_implementation=attn_implementation)
    hf = transformers.BertForQuestionAnswering(hf_config)
    hf.load_state_dict(model.state_dict(), strict=True)  # our module names are the checkpoints' names
    return hf.train(model.training)


def padded_batch(config, lengths, seed=0):
    """Random ids, question/context token types, and an attention mask with trailing padding."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    input_ids = torch.randint(1, config.vocab_size, (len(lengths), L), generator=g)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        token_type_ids[row, n // 3:n] = 1  # the "context" part
    input_ids[attention_mask == 0] = config.pad_token_id
    return input_ids, token_type_ids, attention_mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("tiny", TINY, ids=["h32", "h24"])
def test_logits_match_transformers_with_padding(tiny, attn_implementation):
    torch.manual_seed(0)
    model = perturb(BertForQuestionAnswering(BertConfig(**tiny))).eval()
    hf = transformers_twin(model, attn_implementation)
    batch = padded_batch(model.config, [17, 9, 4, 17])
    with torch.no_grad():
        ours = model(*batch)
        theirs = hf(input_ids=batch[0], token_type_ids=batch[1], attention_mask=batch[2])
        hidden = model.bert(input_ids=batch[0], token_type_ids=batch[1], attention_mask=batch[2])
        hf_hidden = hf.bert(input_ids=batch[0], token_type_ids=batch[1], attention_mask=batch[2]).last_hidden_state
    assert ours.loss is None and ours.start_logits.shape == (4, 17)
    # Padded positions too: their queries still see only the real keys, in both implementations.
    # measured max |diff|: logits 1.5e-6, hidden states 1.8e-6 (h24, init range 0.2); 2.4e-7 / 9.5e-7 (h32)
    torch.testing.assert_close(ours.start_logits, theirs.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.end_logits, theirs.end_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden, hf_hidden, rtol=0, atol=1e-5)


def test_defaults_without_mask_or_token_types_match_transformers():
    model = perturb(make_model()).eval()
    hf = transformers_twin(model)
    input_ids = padded_batch(model.config, [12, 12])[0]
    with torch.no_grad():
        ours, theirs = model(input_ids), hf(input_ids=input_ids)
    torch.testing.assert_close(ours.start_logits, theirs.start_logits, rtol=0, atol=1e-5)  # measured 1.8e-7


def test_padding_does_not_change_real_positions():
    model = perturb(make_model()).eval()
    input_ids, token_type_ids, _ = padded_batch(model.config, [11])
    pad = 7
    # Pad with random (not pad-token) ids: the mask alone must hide them.
    padded_ids = torch.cat([input_ids, torch.randint(1, 99, (1, pad))], dim=1)
    padded_types = torch.cat([token_type_ids, torch.ones(1, pad, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 11, dtype=torch.long), torch.zeros(1, pad, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(input_ids, token_type_ids)
        padded = model(padded_ids, padded_types, mask)
    # measured: 8.9e-8 (summation order only)
    torch.testing.assert_close(padded.start_logits[:, :11], alone.start_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(padded.end_logits[:, :11], alone.end_logits, rtol=0, atol=1e-6)


def test_loss_and_gradients_match_transformers():
    # Dropout off so train mode (the SDPA training path) is deterministic for both models.
    model = perturb(make_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    hf = transformers_twin(model)
    input_ids, token_type_ids, attention_mask = padded_batch(model.config, [15, 10, 15, 6])
    # One answer span, one unanswerable ([CLS]), one past the sequence end (ignored), one negative (clamped to 0).
    start = torch.tensor([3, 0, 40, -2])
    end = torch.tensor([5, 0, 44, 2])
    ours = model(input_ids, token_type_ids, attention_mask, start_positions=start, end_positions=end)
    theirs = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                start_positions=start, end_positions=end)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=1e-6)  # measured 0.0
    ours.loss.backward()
    theirs.loss.backward()
    hf_params = dict(hf.named_parameters())
    worst = 0.0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        worst = max(worst, (p.grad - hf_params[name].grad).abs().max().item())
        torch.testing.assert_close(p.grad, hf_params[name].grad, rtol=0, atol=1e-5, msg=name)
    assert worst < 1e-5  # measured 1.5e-7
    # The padding token's embedding row gets no gradient (padding_idx), as in BERT.
    assert model.bert.embeddings.word_embeddings.weight.grad[0].abs().max() == 0


def test_one_matrix_product_for_query_key_and_value():
    """Self-attention projects q, k and v in one product (three stacked weight matrices): four products
    per layer (q/k/v, attention output, intermediate, output) plus the span head. The logits equal the
    transformers tests' above, which use three separate products."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountProducts(TorchDispatchMode):
        products = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.products += func.overloadpacket.__name__ in ("addmm", "mm", "linear")
            return func(*args, **(kwargs or {}))

    model = make_model().eval()
    with torch.no_grad(), CountProducts() as counter:
        model(padded_batch(model.config, [9, 5])[0])
    assert counter.products == 4 * model.config.num_hidden_layers + 1  # measured 9 (13 with three products)


def test_loss_is_mean_of_start_and_end_cross_entropy():
    model = make_model().eval()
    input_ids = padded_batch(model.config, [9, 9])[0]
    out = model(input_ids, start_positions=torch.tensor([2, 50]), end_positions=torch.tensor([4, 1]))
    ce = torch.nn.functional.cross_entropy
    # the second start (50) is past the end and ignored: only row 0 counts for the start loss
    expected = (ce(out.start_logits[:1], torch.tensor([2])) + ce(out.end_logits, torch.tensor([4, 1]))) / 2
    torch.testing.assert_close(out.loss, expected)


def test_bf16_autocast_forward_stays_close_to_fp32():
    model = perturb(make_model()).eval()
    batch = padded_batch(model.config, [20, 13])
    with torch.no_grad():
        fp32 = model(*batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(*batch)
    real = batch[2].bool()
    assert bf16.start_logits.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits (0.4% relative error per rounding); measured max |diff| 0.0020 on
    # logits up to 0.51, real positions. A wrong mask or dtype mix-up gives errors of order 0.1-1.
    diff = (bf16.start_logits.float() - fp32.start_logits)[real].abs().max().item()
    assert diff < 0.015, diff


def test_dropout_only_in_training():
    model = make_model(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    batch = padded_batch(model.config, [10, 7])
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(*batch).start_logits, model(*batch).start_logits)
        model.train()
        assert not torch.equal(model(*batch).start_logits, model(*batch).start_logits)


def test_init_like_bert():
    model = make_model(initializer_range=0.05, vocab_size=400, hidden_size=64, intermediate_size=128)
    emb = model.bert.embeddings.word_embeddings.weight
    assert torch.all(emb[0] == 0)  # padding row
    assert abs(emb[1:].std().item() - 0.05) < 0.005
    layer = model.bert.encoder.layer[0]
    assert abs(layer.intermediate.dense.weight.std().item() - 0.05) < 0.005
    assert torch.all(layer.attention.self.query.bias == 0) and torch.all(model.qa_outputs.bias == 0)
    assert torch.all(layer.output.LayerNorm.weight == 1) and torch.all(layer.output.LayerNorm.bias == 0)


def test_sequence_longer_than_positions_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="max_position_embeddings 40"):
        model(torch.ones(1, 41, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# config.json


def write(tmp_path, obj, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def test_config_round_trip_and_extra_keys(tmp_path):
    config = BertConfig(**TINY[1])
    config.to_json(tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "bert" and raw["architectures"] == ["BertForQuestionAnswering"]
    assert BertConfig.from_json(tmp_path / "config.json") == config
    # A transformers-style config with many extra keys and an int where a float is expected.
    raw.update(use_cache=True, gradient_checkpointing=False, transformers_version="4.8.2",
               position_embedding_type="absolute", pad_token_id=None, layer_norm_eps=1)
    config = BertConfig.from_json(write(tmp_path, raw))
    assert config.layer_norm_eps == 1.0 and isinstance(config.layer_norm_eps, float)
    assert config.pad_token_id == 0


def test_config_spanbert_original_fields(tmp_path):
    # The original SpanBERT release's config.json: no layer_norm_eps, no pad_token_id.
    raw = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
           "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
           "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
           "type_vocab_size": 2, "vocab_size": 28996}
    assert BertConfig.from_json(write(tmp_path, raw)) == BertConfig()


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": None}, r"config\.json: missing required field\(s\) num_hidden_layers"),
    ({"hidden_size": "768"}, r"config\.json: field hidden_size must be int, got '768'"),
    ({"hidden_size": 768.0}, r"field hidden_size must be int"),
    ({"num_hidden_layers": True}, r"field num_hidden_layers must be int"),
    ({"layer_norm_eps": "1e-12"}, r"field layer_norm_eps must be float"),
    ({"hidden_act": "relu"}, r"config\.json: hidden_act 'relu' is not supported"),
    ({"num_attention_heads": 5}, r"not a multiple of num_attention_heads 5"),
    ({"hidden_size": 0}, r"hidden_size must be positive"),
    ({"attention_probs_dropout_prob": 1.5}, r"config\.json: attention_probs_dropout_prob must be in \[0, 1\), got 1.5"),
    ({"hidden_dropout_prob": -0.1}, r"hidden_dropout_prob must be in \[0, 1\)"),
    ({"layer_norm_eps": -1}, r"config\.json: layer_norm_eps must be > 0, got -1.0"),
    ({"initializer_range": -0.02}, r"config\.json: initializer_range must be a finite number >= 0, got -0.02"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type 'relative_key' is not supported"),
])
def test_config_errors_name_file_and_field(tmp_path, change, message):
    raw = dataclasses.asdict(BertConfig())
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_json(write(tmp_path, raw))


def test_config_not_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        BertConfig.from_json(path)
    with pytest.raises(ConfigError, match="expected a JSON object"):
        BertConfig.from_json(write(tmp_path, [1, 2]))
