"""Critic and reward-model trainer: the policy's backbone with a scalar head (a sequence-classification model
with one label), so an exported directory loads with ``AutoModelForSequenceClassification`` and is served by
the reward service's model scorer. Losses: ``value`` (clipped, per token) and ``pairwise`` (Bradley-Terry)."""

from __future__ import annotations

import torch

from alignmesh.services.common.errors import InvalidArgument
from alignmesh.services.trainer import losses
from alignmesh.services.trainer.backend import Experience, LossSpec, move_experience, register
from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

CRITIC_LOSSES = ("value", "pairwise")


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


@register("critic")
class TorchCriticBackend(TorchTrainerBackend):
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

    def train_step(self, batch: Experience, loss: LossSpec, learning_rate: float | None) -> tuple[int, dict]:
        if loss.name not in CRITIC_LOSSES:
            raise InvalidArgument("loss.name", f"a critic trains with {list(CRITIC_LOSSES)}, got {loss.name!r}")
        if loss.name == "value" and (batch.returns is None or batch.old_values is None):
            raise InvalidArgument("returns", "the value loss needs returns and old_values")
        if loss.name == "pairwise" and batch.input_ids.shape[0] % 2:
            raise InvalidArgument("input_ids", "pairwise needs an even batch: chosen rows first, then rejected")
        with self.lock:
            if learning_rate is not None:
                for g in self.optimizer.param_groups:
                    g["lr"] = learning_rate
            batch = move_experience(batch, self.device)
            stats: dict[str, float] = {}
            for _ in range(max(1, loss.epochs)):
                self.optimizer.zero_grad(set_to_none=True)
                values, scores = token_values(self.model, batch.input_ids, batch.attention_mask)
                if loss.name == "value":
                    value, parts = losses.value_loss(values, batch.old_values, batch.returns, batch.loss_mask,
                                                     loss.clip_eps)
                else:
                    half = scores.shape[0] // 2
                    value, parts = losses.pairwise_loss(scores[:half], scores[half:])
                value.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                stats = {"loss": float(value.detach()), "grad_norm": float(grad_norm),
                         **{k: float(v) for k, v in parts.items()}}
            self.step += 1
            stats["lr"] = self.optimizer.param_groups[0]["lr"]
            return self.step, stats

