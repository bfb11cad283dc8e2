"""Model-based reward: a sequence-classification head (one label) scoring prompt + completion."""

from __future__ import annotations

import torch

from alignmesh.services.reward.registry import Item


class SequenceClassifierScorer:
    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 256):
        from transformers import AutoModelForSequenceClassification

        from alignmesh.services.models.loading import load_tokenizer, quiet_transformers

        quiet_transformers()
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1).to(device).eval()
        self.tokenizer = load_tokenizer(model_path)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.batch_size = device, batch_size

    def score(self, items: list[Item]) -> list[float]:
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                texts = [it.prompt + it.completion for it in items[i:i + self.batch_size]]
                enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
                out.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        return out
