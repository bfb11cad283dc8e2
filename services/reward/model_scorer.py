"""Model-based reward: a sequence-classification head (one label) scoring prompt + completion."""

from __future__ import annotations

import torch

from alignmesh.services.reward.registry import Item


class SequenceClassifierScorer:
    """Scores ``prompt + completion + eos`` (the completion as generated ends with eos, which the reward service
    receives stripped; reward models trained by the ``reward_model`` flow see it)."""

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 256, append_eos: bool = True):
        from transformers import AutoModelForSequenceClassification

        from alignmesh.services.models.loading import load_tokenizer, quiet_transformers

        quiet_transformers()
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1).to(device).eval()
        self.tokenizer = load_tokenizer(model_path)
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.batch_size = device, batch_size
        self.suffix = self.tokenizer.eos_token if append_eos and self.tokenizer.eos_token else ""

    def score(self, items: list[Item]) -> list[float]:
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                texts = [it.prompt + it.completion + self.suffix for it in items[i:i + self.batch_size]]
                enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
                out.extend(self.model(**enc).logits[:, 0].float().cpu().tolist())
        return out
