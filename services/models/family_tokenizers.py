"""Tokenizers with the structure of the families' own, trained locally (no download): byte-level BPE with ChatML
special tokens like Qwen2/Qwen3's, and SentencePiece-style BPE (``▁`` word boundaries, ``<s>``/``</s>``) like
Llama-2/Mistral's and Gemma's (``<bos>``/``<eos>``, ``<start_of_turn>``). Unlike the embedded character tokenizer,
their merges make multi-character tokens, so text → tokens → text is not one character per token: what the
token-in/token-out episodes and the chat templates are tested against.

transformers ships no tokenizer vocabularies offline, so the vocabulary is trained on the embedded task's own text
(arithmetic) with the ``tokenizers`` trainers; the pre-tokenization, decoding, special tokens, tokenizer class and
chat template are the family's.
"""

from __future__ import annotations

import random

QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
              "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
              "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

STYLES = {  # family -> (style, specials in id order, bos, eos, pad, tokenizer class, chat template)
    "qwen2": ("bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>",
              "Qwen2TokenizerFast", QWEN_CHAT),
    "qwen3": ("bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|endoftext|>",
              "Qwen2TokenizerFast", QWEN_CHAT),
    "llama": ("metaspace", ["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>", "LlamaTokenizerFast", LLAMA_CHAT),
    "mistral": ("metaspace", ["<unk>", "<s>", "</s>"], "<s>", "</s>", "</s>", "LlamaTokenizerFast", LLAMA_CHAT),
    "gemma": ("metaspace", ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], "<bos>",
              "<end_of_turn>", "<pad>", "GemmaTokenizerFast", GEMMA_CHAT),
}


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """The task's text: additions with their answers, and the chat roles' names."""
    rng = random.Random(seed)
    lines = [f"{a}+{b}={a + b}" for a, b in ((rng.randint(0, 99), rng.randint(0, 99)) for _ in range(n))]
    return lines + ["user\nassistant\nmodel\n[INST] [/INST]"] * 20


def build_family_tokenizer(family: str, vocab_size: int = 320):
    """A ``PreTrainedTokenizerFast`` subclass of ``family``'s own class, trained on ``corpus()``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    style, specials, bos, eos, pad, cls_name, template = STYLES[family]
    if style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(corpus())) | {"▁"})
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          initial_alphabet=alphabet, show_progress=False))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos,
                                                                                                tok.token_to_id(bos))])
    cls = getattr(transformers, cls_name)
    out = cls(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
              unk_token="<unk>" if "<unk>" in specials else None,
              additional_special_tokens=[s for s in specials if s not in (bos, eos, pad, "<unk>")])
    out.chat_template = template
    return _as_loaded(out)


def _as_loaded(tok):
    """The tokenizer as its class rebuilds it on load (transformers' family classes impose their own
    pre-tokenization, e.g. Qwen2's one-digit-at-a-time split): what a saved ``tokenizer.json`` must describe, so
    the coordinator's tokenizers-only reader and transformers agree on every id."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp)
