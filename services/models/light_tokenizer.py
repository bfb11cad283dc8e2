"""A tokenizer for processes that only encode and decode (the coordinator): the ``tokenizers`` library reading
``tokenizer.json`` directly, without importing transformers (several seconds of start-up per process).
Falls back to ``AutoTokenizer`` for model directories without a ``tokenizer.json``."""

from __future__ import annotations

import json
from pathlib import Path


class LightTokenizer:
    """The subset of the HF tokenizer API the flows use: ``tok(text)["input_ids"]``, ``decode``, special ids."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        special = _read_json(path / "special_tokens_map.json")

        def token_id(name: str) -> int | None:
            value = config.get(name) or special.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            return self._tok.token_to_id(value) if value else None

        self.chat_template = _chat_template(path, config)
        self._specials = {name: (config.get(name) or special.get(name)) for name in ("bos_token", "eos_token")}
        self._specials = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k, v in self._specials.items()}
        self.eos_token_id = token_id("eos_token")
        self.bos_token_id = token_id("bos_token")
        self.pad_token_id = token_id("pad_token")
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self._tok.encode(text, add_special_tokens=add_special_tokens).ids}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        """The model's chat template rendered as transformers renders it (a sandboxed jinja2 environment, the
        special tokens as variables), as text."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(messages=messages,
                                                          add_generation_prompt=add_generation_prompt,
                                                          **self._specials)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _chat_template(path: Path, config: dict) -> str | None:
    """Where transformers keeps it: ``chat_template.jinja`` (written by recent versions), ``chat_template.json``,
    or the ``chat_template`` key of ``tokenizer_config.json`` (older ones)."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    template = _read_json(path / "chat_template.json").get("chat_template") or config.get("chat_template")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_light_tokenizer(path: str | Path):
    if (Path(path) / "tokenizer.json").is_file():
        return LightTokenizer(path)
    from alignmesh.services.models.loading import load_tokenizer

    return load_tokenizer(path)
