"""The embedded default: a tiny Llama-style model and a character tokenizer, created locally.

Deterministic: the same seed gives the same bytes. 20 tokens (pad, bos, eos, digits, ``+ = - * ( )`` and
space); hidden 128, 2 layers, 4 heads, FFN 512, tied embeddings, 64 positions: 527,488 parameters.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from alignmesh.services.common.settings import DEFAULT_MODEL, DEFAULT_MODEL_NAME, ClusterConfig, default_model_dir

CHARS = "0123456789+=-*() "
SPECIALS = ("<pad>", "<s>", "</s>")
DEFAULT_NAME = DEFAULT_MODEL_NAME


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(list(SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


# Decoder families the tests build tiny random models of (the same character tokenizer for all).
FAMILIES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "mistral": "MistralConfig",
            "gemma": "GemmaConfig"}


def build_config(hidden: int = 128, layers: int = 2, heads: int = 4, ffn: int = 512, positions: int = 64,
                 tie: bool = True, family: str = "llama", kv_heads: int | None = None, vocab: int | None = None,
                 special_ids: tuple[int | None, int, int] = (1, 2, 0)):
    """``kv_heads`` < ``heads``: grouped-query attention. ``vocab`` and ``special_ids`` (bos, eos, pad): those of
    another tokenizer than the character one."""
    import transformers

    cls = getattr(transformers, FAMILIES[family])
    extra = {"head_dim": hidden // heads} if family in ("qwen3", "gemma") else {}
    bos, eos, pad = special_ids
    return cls(vocab_size=vocab or len(SPECIALS) + len(CHARS), hidden_size=hidden, intermediate_size=ffn,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
               max_position_embeddings=positions, tie_word_embeddings=tie, bos_token_id=bos,
               eos_token_id=eos, pad_token_id=pad, torch_dtype="float32", **extra)


def create_model_dir(path: str | Path, seed: int = 0, family_tokenizer: bool = False, **arch) -> Path:
    """Write a fresh model + tokenizer to ``path`` (atomically: temp dir, then rename). ``family_tokenizer``: a
    tokenizer with the structure of the family's own (``family_tokenizers.py``) instead of the character one."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignmesh.services.models.loading import quiet_transformers

    quiet_transformers()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        tok = build_tokenizer()
        if family_tokenizer:
            from alignmesh.services.models.family_tokenizers import build_family_tokenizer

            tok = build_family_tokenizer(arch.get("family", "llama"))
            arch.update(vocab=len(tok), special_ids=(tok.bos_token_id, tok.eos_token_id, tok.pad_token_id))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(build_config(**arch))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, path) if not path.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_default_model(cache_dir: Path) -> Path:
    path = default_model_dir(cache_dir)
    if not (path / "config.json").is_file():
        create_model_dir(path, seed=0)
    return path


def ensure_model(cfg: ClusterConfig) -> Path:
    """``cfg.model_path()``, creating the embedded default first when ``model: default``."""
    if cfg.model == DEFAULT_MODEL:
        ensure_default_model(Path(cfg.cache_dir).expanduser())
    return cfg.model_path()
