"""Greedy held-out accuracy of a causal LM in-process (the same check the coordinator runs as a service call)."""

from __future__ import annotations

import torch


def greedy_accuracy(model, tokenizer, examples, batch: int = 250) -> float:
    model.eval()
    right = 0
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            chunk = examples[i:i + batch]
            rows = [tokenizer(e.prompt)["input_ids"] for e in chunk]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, width - len(r):] = torch.tensor(r)
                mask[j, width - len(r):] = 1
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=4,
                                 pad_token_id=pad, eos_token_id=eos)[:, width:]
            for e, row in zip(chunk, out.tolist()):
                toks = row[:row.index(eos)] if eos in row else row
                right += tokenizer.decode(toks, skip_special_tokens=False).strip() == e.answer
    model.train()
    return right / len(examples)
