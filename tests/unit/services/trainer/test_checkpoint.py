import pytest
import torch
from transformers import AutoModelForCausalLM

from alignmesh.services.trainer import checkpoint


def model_and_opt(path):
    model = AutoModelForCausalLM.from_pretrained(path)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_round_trip_restores_weights_optimizer_and_counters(tmp_path, tiny_model_dir):
    model, opt = model_and_opt(tiny_model_dir)
    model(input_ids=torch.tensor([[1, 4, 5]]), labels=torch.tensor([[1, 4, 5]])).loss.backward()
    opt.step()
    checkpoint.save(tmp_path / "ck", model, opt, {"step": 7, "weight_version": 3}, export_hf=True,
                    tokenizer_dir=str(tiny_model_dir))
    fresh, fresh_opt = model_and_opt(tiny_model_dir)
    state = checkpoint.load(tmp_path / "ck", fresh, fresh_opt)
    assert state == {"step": 7, "weight_version": 3}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "ck" / "hf")
    assert torch.equal(exported.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert (tmp_path / "ck" / "hf" / "tokenizer.json").is_file()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    model, opt = model_and_opt(tiny_model_dir)
    checkpoint.save(tmp_path / "ck", model, opt, {"step": 1, "weight_version": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path / "ck", model, opt, {"step": 2, "weight_version": 2})
    assert {p.name: p.read_bytes() for p in (tmp_path / "ck").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary directory left behind


def test_save_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path, tiny_model_dir):
    from alignmesh.services.common.errors import FailedPrecondition
    from alignmesh.services.trainer.torch_backend import TorchTrainerBackend

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    trainer = TorchTrainerBackend(str(tiny_model_dir), seed=0)
    with pytest.raises(FailedPrecondition, match="is not a checkpoint"):
        trainer.save_checkpoint(str(precious), export_hf=False)
    assert (precious / "thesis.tex").read_text() == "years of work"
    trainer.save_checkpoint(str(tmp_path / "ckpt"), export_hf=False)
    trainer.save_checkpoint(str(tmp_path / "ckpt"), export_hf=False)  # a checkpoint may be replaced
