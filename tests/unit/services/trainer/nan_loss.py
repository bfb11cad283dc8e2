"""A loss whose value (and so every gradient) is NaN when ``params['poison']`` is 1, else plain SFT."""

from alignmesh.services.trainer.losses import LOSSES, Loss, sft_loss


def maybe_nan_sft(logp, batch, spec, normalizer):
    value, stats = sft_loss(logp, batch.loss_mask, normalizer)
    return (value * float("nan") if spec.params.get("poison") else value), stats


LOSSES.register("maybe_nan_sft", Loss(maybe_nan_sft))
