"""A loss that takes a known time (then is plain SFT): a training step slower than the caller's deadline."""

import time

from alignmesh.services.trainer.losses import LOSSES, Loss, sft_loss

SECONDS = 1.2


def slow_sft(logp, batch, spec, normalizer):
    time.sleep(SECONDS)
    return sft_loss(logp, batch.loss_mask, normalizer)


LOSSES.register("slow_sft", Loss(slow_sft))
