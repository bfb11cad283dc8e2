import torch
from transformers import AutoModelForSequenceClassification

from alignmesh.services.trainer.backend import Experience, LossSpec, create


def batch():
    ids = torch.tensor([[1, 4, 13, 5, 14, 6, 2], [1, 7, 13, 8, 14, 9, 0]])
    mask = (ids != 0).long()
    loss_mask = torch.zeros(2, 7)
    loss_mask[:, 5:] = 1.0
    loss_mask[1, 6] = 0.0
    return ids, mask, loss_mask


def test_values_are_shifted_and_masked_and_scores_match_the_exported_classifier(tmp_path, tiny_model_dir):
    critic = create("critic", model_path=str(tiny_model_dir), seed=0)
    ids, mask, _ = batch()
    values, scores = critic.compute_values(ids, mask)
    assert values.shape == (2, 7) and scores.shape == (2,)
    assert (values[:, 0] == 0).all() and values[1, 6] == 0
    critic.save_checkpoint(str(tmp_path / "ck"), export_hf=True)
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ck" / "hf")
    with torch.no_grad():
        logits = exported(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(logits, scores, atol=1e-5)


def test_value_and_pairwise_losses_train(tiny_model_dir):
    critic = create("critic", model_path=str(tiny_model_dir), seed=0, learning_rate=1e-3)
    ids, mask, loss_mask = batch()
    returns = torch.full((2, 7), 0.7) * loss_mask
    first = last = None
    for _ in range(20):
        old, _ = critic.compute_values(ids, mask)
        _, stats = critic.train_step(Experience(ids, mask, loss_mask, returns=returns, old_values=old),
                                     LossSpec(name="value", clip_eps=10.0), None)
        first = first if first is not None else stats["value_loss"]
        last = stats["value_loss"]
    assert last < first / 4
    for _ in range(20):
        _, stats = critic.train_step(Experience(ids, mask, loss_mask), LossSpec(name="pairwise"), None)
    assert stats["pref_accuracy"] == 1.0 and stats["loss"] < 0.3
