"""`prompt_format: chat`: the coordinator renders the model's chat template exactly as transformers does (without
importing it) and trains/generates on the templated tokens; a model without a template is refused by name."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from alignmesh.coordinator.config import parse_job_config
from alignmesh.coordinator.flows.base import FlowContext
from alignmesh.services.common.errors import ConfigError
from alignmesh.services.models.light_tokenizer import load_light_tokenizer

# Written with the embedded tokenizer's own characters, as a model's template is written with its own tokens.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}({{ m['content'] }}){% endif %}"
            "{% endfor %}{% if add_generation_prompt %} {% endif %}")


@pytest.fixture
def chat_model(tiny_model_dir, tmp_path):
    path = tmp_path / "chat"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_the_template_renders_as_transformers_renders_it(chat_model):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "12+34="}]
    light = load_light_tokenizer(chat_model)
    full = AutoTokenizer.from_pretrained(str(chat_model))
    text = light.apply_chat_template(messages, add_generation_prompt=True)
    assert text == full.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == "<s>(12+34=) "


def test_chat_prompts_are_the_templated_tokens(chat_model, tiny_model_dir):
    tok = load_light_tokenizer(chat_model)
    ctx = SimpleNamespace(config=parse_job_config("prompt_format: chat\n"), tokenizer=tok)
    ids = FlowContext.prompt_ids(ctx, "1+2=")
    assert tok.decode(ids) == "<s>(1+2=) " and ids.count(tok.bos_token_id) == 1  # the template's bos, once
    raw = SimpleNamespace(config=parse_job_config("prompt_format: raw\n"), tokenizer=tok)
    assert tok.decode(FlowContext.prompt_ids(raw, "1+2=")) == "<s>1+2="
    assert load_light_tokenizer(tiny_model_dir).chat_template is None


def test_prompt_format_is_checked():
    with pytest.raises(ConfigError, match="prompt_format: must be raw or chat"):
        parse_job_config("prompt_format: chatml\n")
