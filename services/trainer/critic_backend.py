"""Critic and reward-model trainer: the policy's backbone with a scalar head (a sequence-classification model
with one label), so an exported directory loads with ``AutoModelForSequenceClassification`` and is served by
the reward service's model scorer. It trains the registry's critic losses (``value``, ``pairwise``) through the
same step loop as the policy trainers; only its forward differs."""

from __future__ import annotations

import torch

from alignmesh.services.trainer.backend import register
from alignmesh.services.trainer.losses import Values
from alignmesh.services.trainer.torch_backend import TorchEngine, TorchTrainerBackend


def token_values(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``values[b, t]`` = head(hidden state at t - 1): the value of the state before token t (0 at t = 0 and on
    padding); ``scores[b]`` = head at the last real token, as sequence classification scores it."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    v = model.score(hidden).squeeze(-1).float()
    values = torch.zeros_like(v)
    values[:, 1:] = v[:, :-1] * attention_mask[:, 1:].to(v.dtype)
    last = attention_mask.sum(dim=1) - 1
    return values, v[torch.arange(v.shape[0]), last]


class CriticEngine(TorchEngine):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lengths=None) -> Values:
        return Values(*token_values(self.model, input_ids, attention_mask))


@register("critic")
class TorchCriticBackend(TorchTrainerBackend):
    model_kind = "critic"

    def _engine(self) -> CriticEngine:
        return CriticEngine(self.model, self.optimizer, self.grad_clip)

    def _load_model(self, path: str) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        from alignmesh.services.models.loading import quiet_transformers

        quiet_transformers()
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)  # the new head starts the same way every time
            model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model.to(self.device)

    def compute_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        with self.lock, torch.no_grad():
            values, scores = token_values(self.model, input_ids.to(self.device), attention_mask.to(self.device))
        return values.cpu(), scores.cpu()
