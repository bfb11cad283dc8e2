"""A user loss, added the way the trainer documents it: one objective and one ``LOSSES.register`` line.

Advantage-weighted log-likelihood (plain REINFORCE, no ratio, no clipping), scaled by a knob of its own:

    L = -(coef / N) sum_bt mask_bt A_b logprobs_bt
"""

from alignmesh.services.trainer.losses import LOSSES, Loss


def advantage_weighted_nll(logp, batch, spec, normalizer):
    coef = spec.params.get("coef", 1.0)
    mask = batch.loss_mask.to(logp.dtype)
    value = -coef * (logp * mask * batch.advantages.unsqueeze(-1)).sum() / normalizer
    return value, {"weighted_logp": -value.detach() / coef}


LOSSES.register("advantage_weighted_nll", Loss(advantage_weighted_nll, needs=("advantages",)))
