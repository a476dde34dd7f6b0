"""Model FLOPs of one trained token of a decoder-only transformer, the numerator of MFU.

Counted as in PaLM (Chowdhery et al., 2022, appendix B): every matrix product of the forward
pass, times three for forward + backward (the backward pass is two products per forward one).

- Linear layers: 2 FLOPs per weight per token forward, so 6 per weight in training. The weights
  are the attention projections, the MLP and the vocabulary projection (counted even when tied
  to the embedding: it is a product); the embedding lookup, norms and biases are no products.
- Attention: per layer and token, q·k over the context and the weighted sum of v, each
  2 · heads · head_dim FLOPs per context position, so 12 · layers · heads · head_dim · context in
  training. PaLM's context is the whole sequence (`causal=False`, the usual MFU convention);
  with `causal=True` the context of token i is its i + 1 visible positions, (S + 1) / 2 on
  average, the work a causal kernel actually has to do.

Activation checkpointing recomputes the forward pass; MFU does not count that (HFU would).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

H200_DENSE_BF16_FLOPS = 989e12  # NVIDIA's datasheet, H200 SXM, dense (no sparsity)


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DecoderShape:
        """From a Hugging Face Llama/Qwen2-style config (its `config.json` as a dict)."""
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
        )

    @property
    def linear_weights(self) -> int:
        """Weights that multiply activations: q, k, v, o, gate, up, down per layer, then lm_head."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp) + self.hidden * self.vocab


def training_flops_per_token(shape: DecoderShape, seq_len: int, causal: bool = False) -> float:
    """Forward + backward FLOPs per token of a sequence of `seq_len` tokens (see the module)."""
    context = (seq_len + 1) / 2 if causal else seq_len
    attention = 12 * shape.layers * shape.heads * shape.head_dim * context
    return 6 * shape.linear_weights + attention


def model_flops_utilisation(
    tokens_per_s: float, flops_per_token: float, peak_flops: float
) -> float:
    return tokens_per_s * flops_per_token / peak_flops
