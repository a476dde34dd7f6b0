"""Model FLOPs of one trained token of a decoder-only transformer (the numerator of MFU), and the
forward FLOPs of scoring a response by GALP, exact LALP and banded LALP.

    python bench/flops.py      # scoring cost over GALP's at the Qwen2.5-Math 1.5B and 7B shapes


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

from reasonft.scoring.lalp import window_groups, window_size

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


# ---- scoring: the forward FLOPs of GALP, exact LALP and banded LALP ----------------------------
#
# Forward only (scoring has no backward): 2 FLOPs per linear weight per token through the layers,
# 2 * hidden * vocab per scored token for the vocabulary projection (applied only at scored
# positions), and 4 * heads * head_dim per layer per (query, key) pair the attention multiplies
# (q.k and the weighted sum of v).


def forward_flops(shape: DecoderShape, tokens: int, scored: int, pairs: int) -> float:
    layer_weights = shape.linear_weights - shape.hidden * shape.vocab
    return (
        2 * layer_weights * tokens
        + 2 * shape.hidden * shape.vocab * scored
        + 4 * shape.layers * shape.heads * shape.head_dim * pairs
    )


def _causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def scoring_flops(
    shape: DecoderShape,
    prompt_len: int,
    step_lengths: list[int],
    window: float,
    method: str,
    dense_mask: bool = False,
) -> float:
    """Forward FLOPs to score one response of these steps: method "galp", "lalp" (exact: the
    prompt once, then one pass per window group, each token attending to the prompt and causally
    to its pass) or "banded" (one pass; the attention pairs are the mask's, or every (query, key)
    pair up to the sequence's length with `dense_mask`, a plain masked SDPA)."""
    total = sum(step_lengths)
    starts = [sum(step_lengths[:i]) for i in range(len(step_lengths))]
    length = prompt_len + total
    if method == "galp":
        return forward_flops(shape, length, total, _causal_pairs(length))
    if method == "lalp":
        flops = forward_flops(shape, prompt_len, 0, _causal_pairs(prompt_len))
        for start, _, last in window_groups(len(step_lengths), window):
            n = starts[last] + step_lengths[last] - starts[start]
            flops += forward_flops(shape, n, 0, n * prompt_len + _causal_pairs(n))
        return flops + forward_flops(shape, 0, total, 0)
    if method == "banded":
        if dense_mask:
            return forward_flops(shape, length, total, length * length)
        pairs = _causal_pairs(prompt_len)
        token_lo = [
            starts[i - window_size(i, window)] for i, n in enumerate(step_lengths) for _ in range(n)
        ]
        row_lo = [*token_lo[1:], token_lo[-1]]
        # a row sees the prompt, the response from lo(q) to itself (or only itself: lo(q) > q)
        pairs += sum(prompt_len + max(q - lo, 0) + 1 for q, lo in enumerate(row_lo))
        return forward_flops(shape, length, total, pairs)
    raise ValueError(f"method={method!r}: galp, lalp or banded")


def main() -> None:
    """Predicted scoring cost at the Qwen2.5-Math 1.5B and 7B shapes, relative to GALP."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--steps", type=int, nargs="+", default=[60, 150, 300])
    parser.add_argument("--step-tokens", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--windows", nargs="+", default=["4", "16", "0.1", "0.25", "0.5"])
    args = parser.parse_args()
    reference = Path(__file__).resolve().parents[2] / "shared" / "reference"
    shapes = {
        "1.5B": {"num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12,
                 "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936},
        "7B": {"num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
               "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064},
    }  # fmt: skip
    for name, file in (("1.5B", "qwen2.5-math-1.5b"), ("7B", "qwen2.5-math-7b")):
        path = reference / f"{file}.config.json"
        if path.is_file():
            shapes[name] = json.loads(path.read_text())
    print("| shape | steps x tokens | window | exact LALP / GALP | banded / GALP | "
          "banded, dense mask / GALP |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, config in shapes.items():
        shape = DecoderShape.from_config(config)
        for p in args.steps:
            steps = [args.step_tokens] * p
            galp = scoring_flops(shape, args.prompt_tokens, steps, 0, "galp")
            for text in args.windows:
                window = float(text) if "." in text else int(text)
                cost = {
                    m: scoring_flops(shape, args.prompt_tokens, steps, window, m) / galp
                    for m in ("lalp", "banded")
                }
                dense = scoring_flops(shape, args.prompt_tokens, steps, window, "banded", True)
                print(f"| {name} | {p} x {args.step_tokens} | {text} | {cost['lalp']:.2f} | "
                      f"{cost['banded']:.2f} | {dense / galp:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
