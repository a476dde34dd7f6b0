"""Scoring records with a frozen causal LM: PPL, GALP and LALP (METHODS.md §1a, §2a).

Start with `reference`: the definitions, one plain forward pass per scored context. Everything
else computes the same numbers fast, and the tests check it against `reference`:

- `scorer.Scorer`: the score stage's component (`conf/score`); records in, records with score
  columns and a report out. It tokenises, splits steps, batches and calls the engines:
  - `galp`: every token given the full prefix, one pass over prompt + response;
  - `lalp`: exact LALP, every step's window re-encoded (packed, the prompt cached once);
  - `banded`: approximate LALP in one masked pass (`band_attention` skips what it masks);
- `averages`: token log-probs to GALP, PPL, step means and LALP;
- `columns`: the score columns, results attached to records, the report's counts;
- `steps`, `token_steps`: responses cut into steps, tokens mapped to them;
- `predict`: the Scorer over the ranks of `trainer.predict` (`reasonft.ranks`);
- `api.score`: the notebook entry point, `reasonft.score(records, model, tokenizer, ...)`.
"""
