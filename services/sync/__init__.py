"""The side channel that carries weights trainer -> rollout/reference over torch.distributed."""
