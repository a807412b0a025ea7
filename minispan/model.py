"""The BERT encoder and the SQuAD span head, written from the BERT paper (docs/03-encoder.md, docs/04-span-head.md).

Module names are the checkpoints' (bert.encoder.layer.N.attention.self.query, ..., qa_outputs), so loading SpanBERT's
weights is only a matter of prefixes and aliases (weights.py). One layer (post-LayerNorm, as in the original BERT):
    x = LayerNorm(x + Dropout(Dense(SelfAttention(x))))       attention.self / attention.output
    x = LayerNorm(x + Dropout(Dense(GELU(Dense(x)))))          intermediate / output
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from minispan.config import BertConfig


class BertEmbeddings(nn.Module):
    """word + position + token type embeddings, then LayerNorm and dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):  # (B, L) token ids and segment ids
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,): broadcasts over the batch
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, L, H) + (L, H)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))  # (B, L, H)


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the whole sequence (no causal mask)."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, mask):  # x (B, L, H); mask (B, 1, 1, L), True where a key may be attended to
        B, L, H = x.shape
        # query(x), key(x), value(x) as one [H -> 3H] matrix product: the same values up to rounding, fewer operations
        # (docs/03-encoder.md). The weights stay in the checkpoint-named Linears; stacking copies 3 H^2 + 3 H.
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3H, H)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3H,)
        qkv = F.linear(x, weight, bias).view(B, L, 3, self.num_heads, H // self.num_heads)  # (B, L, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, L, hs): q, k and v, each (B, nh, L, hs)
        # softmax(q k^T / sqrt(head_size)) v, with padded keys masked out. SDPA picks a fused kernel that never
        # materialises the (B, nh, L, L) scores (on CUDA with a mask: memory-efficient or cuDNN; flash takes no mask).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout_p if self.training else 0.0)  # (B, nh, L, hs)
        return y.transpose(1, 2).reshape(B, L, H)  # the heads side by side again: (B, L, H)


class BertAddNorm(nn.Module):
    """Dense, dropout, then the residual connection and LayerNorm (both sub-layers end like this)."""

    def __init__(self, in_size, config):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):  # x (B, L, in_size), residual (B, L, H)
        return self.LayerNorm(residual + self.dropout(self.dense(x)))  # (B, L, H)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x):  # (B, L, H)
        return F.gelu(self.dense(x))  # (B, L, intermediate_size); exact erf GELU, as BERT was trained with


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x, mask):  # x (B, L, H)
        x = self.attention(x, mask)  # each token gathers from every other: (B, L, H)
        return self.output(self.intermediate(x), x)  # then each on its own, widened and narrowed again: (B, L, H)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nn.Module):
    """The encoder: token ids -> last hidden states [B, L, H]. No pooler: span prediction doesn't use it."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # attention_mask is 1 for real tokens, 0 for padding; as a boolean (B, 1, 1, L) mask it broadcasts over heads
        # and query positions: no query sees a padded key, so padding never changes the real positions' outputs.
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()  # (B, 1, 1, L)
        return self.encoder(self.embeddings(input_ids, token_type_ids), mask)  # (B, L, H)


@dataclass
class QuestionAnsweringOutput:
    loss: Optional[torch.Tensor]  # scalar; None without positions
    start_logits: torch.Tensor  # [B, L]
    end_logits: torch.Tensor  # [B, L]


class BertForQuestionAnswering(nn.Module):
    """BERT plus a linear span head: a start and an end logit for every token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.apply(self.init_weights)

    def init_weights(self, module):
        """BERT's initialiser: normal(0, initializer_range) weights, zero biases (LayerNorm keeps torch's 1 and 0)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None, end_positions=None):
        hidden = self.bert(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)  # (B, L, H)
        start_logits, end_logits = self.qa_outputs(hidden).unbind(dim=-1)  # (B, L, 2) -> two (B, L)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringOutput(loss, start_logits, end_logits)


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of the start and end cross-entropies. A position outside the sequence is clamped to L, one past
    the end, and ignored, as in run_squad and transformers (build_features never makes one: an answer not
    wholly inside a window points at [CLS])."""
    L = start_logits.size(1)
    # In float32 even for a bf16 model: the softmax over hundreds of positions needs the precision.
    start_loss = F.cross_entropy(start_logits.float(), start_positions.reshape(-1).clamp(0, L), ignore_index=L)
    end_loss = F.cross_entropy(end_logits.float(), end_positions.reshape(-1).clamp(0, L), ignore_index=L)
    return (start_loss + end_loss) / 2
