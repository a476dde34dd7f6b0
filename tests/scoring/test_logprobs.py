import torch

from reasonft.data.prompts import IGNORE_INDEX, build_prompt, encode_example
from reasonft.scoring.logprobs import token_logprobs


def _batch(tok):
    exs = [
        encode_example(build_prompt("Compute 3 + 4.", tok), "<think>\n3 + 4 = 7\n</think>\n\\boxed{7}", tok),
        encode_example(build_prompt("Compute (12 - 5) * 3.", tok), "Step 1: 12 - 5 = 7\n\nStep 2: 21", tok),
    ]
    L = max(len(e["input_ids"]) for e in exs)
    ids = torch.full((2, L), tok.pad_token_id)
    labels = torch.full((2, L), IGNORE_INDEX)
    att = torch.zeros(2, L, dtype=torch.long)
    for i, e in enumerate(exs):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        att[i, :n] = 1
    return ids, att, labels, exs


def test_prompt_mask_exact(tiny_tokenizer):
    ids, _att, labels, exs = _batch(tiny_tokenizer)
    for i, e in enumerate(exs):
        p = e["prompt_len"]
        assert (labels[i, :p] == IGNORE_INDEX).all()
        n = len(e["input_ids"])
        assert (labels[i, p:n] == ids[i, p:n]).all()
        prompt_ids = tiny_tokenizer(build_prompt(["Compute 3 + 4.", "Compute (12 - 5) * 3."][i], tiny_tokenizer), add_special_tokens=False)["input_ids"]
        assert p == len(prompt_ids)


def test_chunked_logprobs_match_full_logits(tiny_model, tiny_tokenizer):
    ids, att, labels, _ = _batch(tiny_tokenizer)
    mask = labels != IGNORE_INDEX
    for chunk in (1, 3, 4096):
        logp, ent = token_logprobs(tiny_model, ids, att, mask, chunk_tokens=chunk)
        with torch.no_grad():
            full = torch.log_softmax(tiny_model(input_ids=ids, attention_mask=att).logits.float(), -1)
        ref = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
        ref_ent = -(full.exp() * full).sum(-1)[:, :-1]
        m = mask[:, 1:]
        torch.testing.assert_close(logp[:, 1:][m], ref[m], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ent[:, 1:][m], ref_ent[m], atol=1e-5, rtol=1e-5)
        assert (logp[:, 1:][~m] == 0).all() and (logp[:, 0] == 0).all()


def test_ce_equals_hf_labels_loss(tiny_model, tiny_tokenizer):
    ids, att, labels, _ = _batch(tiny_tokenizer)
    logp, _ = token_logprobs(tiny_model, ids, att, labels != IGNORE_INDEX, chunk_tokens=5)
    ours = -logp.sum() / (labels != IGNORE_INDEX).sum()
    with torch.no_grad():
        hf = tiny_model(input_ids=ids, attention_mask=att, labels=labels).loss
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=1e-5)


def test_chunked_gradients_match(tiny_model, tiny_tokenizer):
    ids, att, labels, _ = _batch(tiny_tokenizer)
    mask = labels != IGNORE_INDEX
    tiny_model.zero_grad()
    logp, _ = token_logprobs(tiny_model, ids, att, mask, chunk_tokens=4)
    (-logp.sum()).backward()
    g1 = tiny_model.lm_head.weight.grad.clone()
    tiny_model.zero_grad()
    full = torch.log_softmax(tiny_model(input_ids=ids, attention_mask=att).logits.float(), -1)
    ref = full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    (-ref[mask[:, 1:]].sum()).backward()
    torch.testing.assert_close(g1, tiny_model.lm_head.weight.grad, atol=1e-5, rtol=1e-4)
    tiny_model.zero_grad()
