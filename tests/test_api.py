"""The notebook API named in the README is importable from the package root and works."""

import reasonft


def test_pass_at_k_and_is_correct():
    assert reasonft.pass_at_k(10, 10, 3) == 1.0
    assert abs(reasonft.pass_at_k(4, 1, 1) - 0.25) < 1e-12
    assert reasonft.is_correct("<think>\nhalf\n</think>\nSo \\boxed{\\frac{1}{2}}", "0.5")
    assert not reasonft.is_correct("<think>\n\\boxed{1}\n</think>\nno answer here", "1")


def test_score_and_select(tiny_model, tiny_tokenizer):
    records = [
        {"prompt_id": f"p{i}", "prompt": "Compute 3 + 4.", "answer": "7", "source": s,
         "response": "<think>\n3 + 4 = 7\n\nSo 7.\n</think>\n\\boxed{7}", "correct": True}
        for i, s in enumerate(["terse", "verbose", "terse"])
    ]
    scored = reasonft.score(records, tiny_model, tiny_tokenizer, method="all", window=1)
    assert isinstance(scored, list) and all(r["lalp"] is not None and r["ppl"] > 1 for r in scored)
    chosen = reasonft.select(scored, "lalp_top")
    assert {r["selected_by"] for r in chosen} == {"lalp_top"}
    assert len(chosen) == 3  # one per prompt
