import torch
from transformers import AutoModelForCausalLM

from alignmesh.services.models.light_tokenizer import LightTokenizer
from alignmesh.services.models.loading import load_tokenizer
from alignmesh.services.models.tiny import create_model_dir


def test_default_model_is_deterministic_and_reloads_exactly(tmp_path, tiny_model_dir):
    again = create_model_dir(tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    model = AutoModelForCausalLM.from_pretrained(again)
    assert sum(p.numel() for p in model.parameters()) == 527_488
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


def test_character_tokenizer_round_trips_spaces_and_specials(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ids = tok("12 + 34=")["input_ids"]
    assert ids[0] == tok.bos_token_id == 1 and len(ids) == 9
    assert tok.decode(ids, skip_special_tokens=True) == "12 + 34="
    assert (tok.pad_token_id, tok.eos_token_id, len(tok)) == (0, 2, 20)


def test_light_tokenizer_matches_the_hf_tokenizer(tiny_model_dir):
    hf, light = load_tokenizer(tiny_model_dir), LightTokenizer(tiny_model_dir)
    assert (light.pad_token_id, light.eos_token_id, light.bos_token_id) == (0, 2, 1)
    for text in ("0+0=", "99+99=", "1 * (2 - 3)"):
        assert light(text)["input_ids"] == hf(text)["input_ids"]
        assert light(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([1, 4, 5, 0, 2]).tolist()
    assert light.decode(ids) == hf.decode(ids)
