import torch

from alignmesh.coordinator.flows.sequences import build, concat


def test_concat_pads_every_tensor_to_the_widest_batch():
    a = build([[1, 2]], [[3]], pad_id=0)
    b = build([[4]], [[5, 6, 7]], pad_id=0)
    a.behavior_logprobs, b.behavior_logprobs = torch.tensor([[0.0, 0.0, -1.0]]), torch.tensor([[0.0, -2.0, -3.0, -4.0]])
    both = concat([a, b], pad_id=9)
    assert both.input_ids.tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert both.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert both.loss_mask.tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]
    assert both.behavior_logprobs.tolist() == [[0.0, 0.0, -1.0, 0.0], [0.0, -2.0, -3.0, -4.0]]
    a.behavior_logprobs = None
    assert concat([a, b], pad_id=9).behavior_logprobs is None
