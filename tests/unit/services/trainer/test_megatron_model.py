"""The HF <-> Megatron layout mapping, without any process group: sharding then gathering gives back every HF
tensor exactly, for tensor parallel 1, 2 and 4 and for grouped-query attention."""

from __future__ import annotations

import pytest
import torch

from alignmesh.services.trainer.megatron_model import Shape, hf_from_shards, megatron_shard, replicated_param, sources


def hf_state(s: Shape) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    kv = s.groups * s.head_dim
    out = {"model.embed_tokens.weight": torch.randn(s.vocab, s.hidden, generator=g),
           "model.norm.weight": torch.randn(s.hidden, generator=g)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (s.heads * s.head_dim, s.hidden)),
                            ("self_attn.k_proj.weight", (kv, s.hidden)), ("self_attn.v_proj.weight", (kv, s.hidden)),
                            ("self_attn.o_proj.weight", (s.hidden, s.heads * s.head_dim)),
                            ("input_layernorm.weight", (s.hidden,)), ("post_attention_layernorm.weight", (s.hidden,)),
                            ("mlp.gate_proj.weight", (s.ffn, s.hidden)), ("mlp.up_proj.weight", (s.ffn, s.hidden)),
                            ("mlp.down_proj.weight", (s.hidden, s.ffn))):
            out[p + name] = torch.randn(*shape, generator=g)
    if not s.tied:
        out["lm_head.weight"] = torch.randn(s.vocab, s.hidden, generator=g)
    return out


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("groups,tied", [(4, True), (2, False)])
def test_shard_then_gather_is_the_identity(tp, groups, tied):
    s = Shape(layers=2, hidden=16, heads=4, groups=groups, head_dim=4, ffn=24, vocab=20, positions=8, eps=1e-6,
              rope_theta=1e4, tied=tied)
    if groups % tp:
        pytest.skip("tensor parallel must divide the key/value heads")
    hf = hf_state(s)
    ranks = [megatron_shard(hf, s, tp, r) for r in range(tp)]
    shards = {name: [r[name] for r in ranks] for name in ranks[0]}
    back = hf_from_shards(shards, s, list(hf))
    for name, t in hf.items():
        assert torch.equal(back[name], t), name
    for name, parts in shards.items():  # norms are whole on every rank; the rest splits into equal shards
        assert all(p.shape == parts[0].shape for p in parts)
        if replicated_param(name):
            assert all(torch.equal(p, parts[0]) for p in parts)
    sharded = sum(p.numel() for name, parts in shards.items() if not replicated_param(name) for p in parts)
    assert sharded == sum(t.numel() for n, t in hf.items() if not n.endswith("norm.weight"))
    qkv = shards["decoder.layers.0.self_attention.linear_qkv.weight"][0]
    assert qkv.shape[0] == (groups // tp) * (4 // groups + 2) * 4  # whole query groups per rank


def test_every_hf_name_has_a_source_and_bad_parallelism_is_named():
    s = Shape(2, 16, 4, 4, 4, 24, 20, 8, 1e-6, 1e4, True)
    assert sources("model.layers.1.mlp.up_proj.weight") == ["decoder.layers.1.mlp.linear_fc1.weight"]
    assert sources("model.layers.0.self_attn.k_proj.weight") == ["decoder.layers.0.self_attention.linear_qkv.weight"]
    with pytest.raises(ValueError, match="tensor_parallel: 3 must divide the model's key/value heads"):
        s.check(3)
