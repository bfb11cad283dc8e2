"""A Llama-family HF model as a megatron-core GPTModel, and the name/shard mapping between the two layouts.

Mapping (HF name -> Megatron name, how tensor parallelism splits it over ``tp`` ranks):

    model.embed_tokens.weight [V, H]         -> embedding.word_embeddings.weight      rows (vocab parallel)
    layers.i.self_attn.{q,k,v}_proj [*, H]   -> decoder.layers.i.self_attention.linear_qkv.weight
        fused per query group g: [q heads of g; k_g; v_g] ([G * (H/G_heads + 2) * d, H]), rows by groups
    layers.i.self_attn.o_proj [H, H]         -> ...self_attention.linear_proj.weight  columns (row parallel)
    layers.i.input_layernorm                 -> ...input_layernorm.weight             replicated
    layers.i.post_attention_layernorm        -> ...pre_mlp_layernorm.weight           replicated
    layers.i.mlp.{gate,up}_proj [F, H]       -> ...mlp.linear_fc1.weight              rank r holds [gate_r; up_r]
    layers.i.mlp.down_proj [H, F]            -> ...mlp.linear_fc2.weight              columns
    model.norm.weight                        -> decoder.final_layernorm.weight        replicated
    lm_head.weight (untied only)             -> output_layer.weight                   rows (vocab parallel)

The rollout model keeps the HF layout, so the trainer gathers shards and converts them back before a weight sync
(``hf_from_shards``). Pure functions here; the collectives are in ``megatron_rank``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    groups: int  # key/value heads
    head_dim: int
    ffn: int
    vocab: int
    positions: int
    eps: float
    rope_theta: float
    tied: bool

    @classmethod
    def of(cls, config) -> "Shape":
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        heads = config.num_attention_heads
        return cls(config.num_hidden_layers, config.hidden_size, heads,
                   getattr(config, "num_key_value_heads", None) or heads,
                   getattr(config, "head_dim", None) or config.hidden_size // heads, config.intermediate_size,
                   config.vocab_size, config.max_position_embeddings, config.rms_norm_eps, float(theta),
                   bool(config.tie_word_embeddings))

    def check(self, tp: int) -> None:
        for what, n in (("key/value heads", self.groups), ("vocab_size", self.vocab), ("intermediate_size", self.ffn)):
            if n % tp:
                raise ValueError(f"trainer.tensor_parallel: {tp} must divide the model's {what} ({n})")


def build_gpt(shape: Shape, tp: int):
    """An (uninitialised-weights) GPTModel of this shape on CPU; weights come from ``load_shards``."""
    import torch.nn.functional as F
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=shape.layers, hidden_size=shape.hidden, num_attention_heads=shape.heads,
                            num_query_groups=shape.groups, kv_channels=shape.head_dim, ffn_hidden_size=shape.ffn,
                            normalization="RMSNorm", layernorm_epsilon=shape.eps, gated_linear_unit=True,
                            activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0,
                            tensor_model_parallel_size=tp, use_cpu_initialization=True, perform_initialization=False,
                            params_dtype=torch.float32)
    return GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                    vocab_size=shape.vocab, max_sequence_length=shape.positions, position_embedding_type="rope",
                    rotary_base=shape.rope_theta, share_embeddings_and_output_weights=shape.tied)


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shape) -> torch.Tensor:
    per = s.heads // s.groups
    parts = (q.view(s.groups, per * s.head_dim, -1), k.view(s.groups, s.head_dim, -1),
             v.view(s.groups, s.head_dim, -1))
    return torch.cat(parts, dim=1).reshape(s.groups * (per + 2) * s.head_dim, -1)


def _split_qkv(fused: torch.Tensor, s: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per = s.heads // s.groups
    g = fused.view(s.groups, per + 2, s.head_dim, -1)
    return (g[:, :per].reshape(s.heads * s.head_dim, -1), g[:, per].reshape(s.groups * s.head_dim, -1),
            g[:, per + 1].reshape(s.groups * s.head_dim, -1))


def megatron_shard(hf: dict[str, torch.Tensor], s: Shape, tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank ``rank``'s Megatron tensors from full HF weights."""
    def rows(t):
        return torch.chunk(t, tp, dim=0)[rank]

    def cols(t):
        return torch.chunk(t, tp, dim=1)[rank]

    out = {"embedding.word_embeddings.weight": rows(hf["model.embed_tokens.weight"]),
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    for i in range(s.layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        fused = _fuse_qkv(hf[h + "self_attn.q_proj.weight"], hf[h + "self_attn.k_proj.weight"],
                          hf[h + "self_attn.v_proj.weight"], s)
        out[m + "self_attention.linear_qkv.weight"] = rows(fused)
        out[m + "self_attention.linear_proj.weight"] = cols(hf[h + "self_attn.o_proj.weight"])
        out[m + "input_layernorm.weight"] = hf[h + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf[h + "post_attention_layernorm.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([rows(hf[h + "mlp.gate_proj.weight"]),
                                                      rows(hf[h + "mlp.up_proj.weight"])])
        out[m + "mlp.linear_fc2.weight"] = cols(hf[h + "mlp.down_proj.weight"])
    if not s.tied:
        out["output_layer.weight"] = rows(hf["lm_head.weight"])
    return out


def sources(hf_name: str) -> list[str]:
    """The Megatron tensors an HF tensor is built from."""
    if hf_name == "model.embed_tokens.weight":
        return ["embedding.word_embeddings.weight"]
    if hf_name == "model.norm.weight":
        return ["decoder.final_layernorm.weight"]
    if hf_name == "lm_head.weight":
        return ["output_layer.weight"]
    i, rest = hf_name.removeprefix("model.layers.").split(".", 1)
    m = f"decoder.layers.{i}."
    return [m + {"self_attn.q_proj.weight": "self_attention.linear_qkv.weight",
                 "self_attn.k_proj.weight": "self_attention.linear_qkv.weight",
                 "self_attn.v_proj.weight": "self_attention.linear_qkv.weight",
                 "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
                 "input_layernorm.weight": "input_layernorm.weight",
                 "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
                 "mlp.gate_proj.weight": "mlp.linear_fc1.weight",
                 "mlp.up_proj.weight": "mlp.linear_fc1.weight",
                 "mlp.down_proj.weight": "mlp.linear_fc2.weight"}[rest]]


SPLIT_COLUMNS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
REPLICATED = ("layernorm.weight",)


def replicated_param(megatron_name: str) -> bool:
    """Whether every tensor-parallel rank holds the whole tensor (the norms) rather than a shard."""
    return megatron_name.endswith(REPLICATED)


def hf_tensor(hf_name: str, shards: dict[str, list[torch.Tensor]], s: Shape) -> torch.Tensor:
    """One full HF tensor from the per-rank shards (index = tensor-parallel rank) of its Megatron sources."""
    src = sources(hf_name)[0]
    parts = shards[src]
    if src.endswith(REPLICATED):
        return parts[0]
    if src.endswith(SPLIT_COLUMNS):
        return torch.cat(parts, dim=1)
    if src.endswith("linear_qkv.weight"):
        q, k, v = _split_qkv(torch.cat(parts, dim=0), s)
        return {"q": q, "k": k, "v": v}[hf_name.rsplit(".", 2)[-2][0]]
    if src.endswith("linear_fc1.weight"):
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0 if ".gate_proj." in hf_name else 1] for h in halves], dim=0)
    return torch.cat(parts, dim=0)  # vocab-parallel rows


def hf_from_shards(shards: dict[str, list[torch.Tensor]], s: Shape, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: hf_tensor(n, shards, s) for n in names}


def causal_mask(width: int) -> torch.Tensor:
    """Megatron's mask convention: True where attention is *not* allowed. Right padding needs no more than the
    causal mask: a padded position never precedes a real one, and its outputs are masked out of every loss."""
    return torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)[None, None]
