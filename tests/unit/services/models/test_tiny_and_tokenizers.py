import json

import pytest
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


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma"])
def test_family_tokenizers_read_the_same_by_transformers_and_by_the_coordinator(family, tmp_path):
    """Each family's tokenizer structure (its class rebuilds pre-tokenization on load: Qwen2 and Gemma split digits
    one by one, Llama's SentencePiece-style merges join them), saved with its chat template (transformers writes
    ``chat_template.jinja``): the coordinator's tokenizers-only reader gives the same ids and the same rendered chat
    as transformers, and text survives encode -> decode."""
    from transformers import AutoTokenizer

    from alignmesh.services.models.light_tokenizer import load_light_tokenizer
    from alignmesh.services.models.tiny import create_model_dir

    path = create_model_dir(tmp_path / family, family=family, family_tokenizer=True)
    light, full = load_light_tokenizer(path), AutoTokenizer.from_pretrained(str(path))
    messages = [{"role": "user", "content": "12+34="}]
    chat = light.apply_chat_template(messages)
    assert chat == full.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for text in ("12+34=", "7+88=95", chat):
        assert light(text)["input_ids"] == full(text)["input_ids"]
        ids = light(text, add_special_tokens=False)["input_ids"]
        assert light.decode(ids) == full.decode(ids) == text
    digits = [full.decode([i]) for i in light("12+34=", add_special_tokens=False)["input_ids"]]
    assert (digits[0] == "1") == (family in ("qwen2", "qwen3", "gemma"))  # split digits, or merged "12"
    config = json.loads((path / "config.json").read_text())
    assert config["vocab_size"] == len(full) and config["eos_token_id"] == light.eos_token_id
