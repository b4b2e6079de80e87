"""Hugging Face loaders for GPT-NeoX, Llama, Mistral, Qwen2 and Gemma-2: parity with
`transformers` (torch, CPU, eager attention) on tiny random models, masked patches against the
torch model with hooks, config mapping (real configs' edge counts, every unsupported setting an
error), sharded and bf16 checkpoints, and the tokenizer.json wrapper."""

import copy
import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacdc._graph import EdgeMask, GraphShape
from jacdc.models import (
    SUPPORTED_ARCHITECTURES,
    hf_transformer_config,
    load_hf,
    load_hf_tokenizer,
    read_hf_weights,
    zero_ablation_sources,
)


torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import CASES, SEQ, build, save, tokens, torch_logits  # noqa: E402


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case name -> (folder, reference torch model in float32)."""
    out = {}
    for name in CASES:
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, save(build(name, seed=len(out)), folder, name))
    return out


@eqx.filter_jit
def _patched_logits(model, toks, mask, corrupted):
    return jax.vmap(lambda t: model(t, mask, corrupted)[0])(toks)


def _masked_logits(model, toks, mask):
    """Logits with `mask` under zero ablation (one compiled function per model config, shared by
    the clean and the patched runs to keep this file fast)."""
    corrupted = jax.tree.map(lambda x: x[0], zero_ablation_sources(model, 1, toks.shape[1]))
    return np.asarray(_patched_logits(model, jnp.asarray(toks), mask, corrupted))


def jacdc_logits(model, toks):
    return _masked_logits(model, toks, EdgeMask.full(model.graph_shape))


# ----------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_transformers(saved, name):
    folder, ref = saved[name]
    model = load_hf(folder)
    toks = tokens(1)
    want = torch_logits(ref, toks)
    got = jacdc_logits(model, toks)
    assert got.shape == want.shape
    assert np.abs(want).max() > 1.0  # logits are not near-constant: the test can see errors
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_case_coverage(saved):
    """The parity cases hold every configuration the issue names."""
    cfgs = {n: load_hf(f).cfg for n, (f, _) in saved.items()}
    assert cfgs["neox"].parallel_attn_mlp and cfgs["neox"].rotary_dim == 2  # 0.25 * d_head 8
    assert not cfgs["neox_sequential"].parallel_attn_mlp
    assert cfgs["llama"].kv_heads == 2 < cfgs["llama"].n_heads  # GQA
    assert cfgs["llama_mqa_bias"].kv_heads == 1  # MQA
    assert dict(cfgs["llama"].rope_scaling)["rope_type"] == "llama3"
    assert cfgs["qwen2"].sliding_window == (None, 4)  # layers >= max_window_layers slide
    assert cfgs["gemma2"].sliding_window == (4, None)  # even layers slide
    assert cfgs["mistral"].sliding_window == (5, 5)
    assert max(w for c in cfgs.values() for w in (c.windows() if c.sliding_window else ()) if w)
    assert all(w is None or w < SEQ for c in cfgs.values() for w in c.windows())
    g = cfgs["gemma2"]
    assert g.attn_softcap == 2.0 and g.final_softcap == 4.0 and g.post_norms
    assert g.attn_scale == pytest.approx(np.sqrt(12))
    assert g.embed_scale == pytest.approx(np.sqrt(32))
    # Qwen2 has q/k/v biases and no o bias
    w = read_hf_weights(saved["qwen2"][0])
    assert "model.layers.0.self_attn.q_proj.bias" in w
    assert "model.layers.0.self_attn.o_proj.bias" not in w
    # tied and untied
    assert "lm_head.weight" in read_hf_weights(saved["llama"][0])
    assert "lm_head.weight" not in read_hf_weights(saved["qwen2"][0])


def test_sharded_save(saved):
    folder, _ = saved["llama"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert not (folder / "model.safetensors").exists()


def test_missing_shard_is_named(saved, tmp_path):
    folder, _ = saved["llama"]
    copy_ = tmp_path / "llama"
    shutil.copytree(folder, copy_)
    index = json.loads((copy_ / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (copy_ / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        load_hf(copy_)


def test_index_names_tensor_its_shard_lacks(saved, tmp_path):
    folder, _ = saved["llama"]
    copy_ = tmp_path / "llama"
    shutil.copytree(folder, copy_)
    path = copy_ / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    index["weight_map"]["model.layers.0.extra.weight"] = next(iter(index["weight_map"].values()))
    path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.layers.0.extra.weight"):
        load_hf(copy_)


def test_bf16_checkpoint(saved):
    """The bf16 save: the float32 load equals torch run in float32 on the same bf16 weights;
    `dtype="bfloat16"` keeps them in bf16 (recorded in the config) and rounds nothing more."""
    folder, ref = saved["mistral"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta.get("dtype", meta.get("torch_dtype")) == "bfloat16"
    toks = tokens(2)
    want = torch_logits(ref, toks)
    f32 = load_hf(folder)
    assert f32.cfg.weight_dtype == "float32" and f32.w_e.dtype == jnp.float32
    np.testing.assert_allclose(jacdc_logits(f32, toks), want, atol=1e-4, rtol=0)
    bf16 = load_hf(folder, dtype="bfloat16")
    assert bf16.cfg.weight_dtype == "bfloat16" and bf16.w_e.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bf16.w_e, np.float32), np.asarray(f32.w_e))
    np.testing.assert_allclose(jacdc_logits(bf16, toks), want, atol=1e-4, rtol=0)


def test_float16_storage(saved):
    folder, ref = saved["qwen2"]
    model = load_hf(folder, dtype="float16")
    assert model.cfg.weight_dtype == "float16" and model.blocks[0].w_q.dtype == jnp.float16
    toks = tokens(3)
    want = torch_logits(ref, toks)
    got = jacdc_logits(model, toks)
    assert 0 < np.abs(got - want).max() < 0.05 * np.abs(want).max()  # fp16-rounded weights


def test_bad_dtype(saved):
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        load_hf(saved["neox"][0], dtype="int8")


def test_gpt2_is_routed(tmp_path):
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path)
    toks = tokens(0, seq=6) % 20
    np.testing.assert_allclose(
        jacdc_logits(load_hf(tmp_path), toks), torch_logits(model, toks), atol=1e-4, rtol=0
    )


# ----------------------------------------------------------------------------------------------
# Masked patches against torch with hooks (zero ablation: a removed edge reads zero)


def _set(mask, field, index, value=0.0):
    """`mask` with one entry of one field set to `value`."""
    arr = getattr(mask, field)
    return eqx.tree_at(lambda m: getattr(m, field), mask, arr.at[index].set(value))


def _head_in(ref, name, layer):
    """The module whose input is the concatenated head outputs `z`, `(batch, seq, H * e)`."""
    if name.startswith("neox"):
        return ref.gpt_neox.layers[layer].attention.dense
    return ref.model.layers[layer].self_attn.o_proj


def _final_norm(ref, name):
    return ref.gpt_neox.final_layer_norm if name.startswith("neox") else ref.model.norm


def _head_result(module, z, head, e):
    """Head `head`'s write to the residual stream: `z_h @ W_O[h]` (no bias: `b_O` belongs to no
    head)."""
    w = module.weight[:, head * e : (head + 1) * e]
    return z[..., head * e : (head + 1) * e] @ w.T


def _hooked_logits(ref, toks, hooks):
    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        return torch_logits(ref, toks)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["neox", "llama", "qwen2"])
def test_head_to_output_edge(saved, name):
    """Removing `head (0, h) -> output` (zero ablation) = subtracting that head's result from
    the final residual stream in torch (parallel blocks, GQA, q/k/v biases)."""
    folder, ref = saved[name]
    model = load_hf(folder)
    cfg, shape = model.cfg, model.graph_shape
    layer, head = 0, 1
    mask = _set(EdgeMask.full(shape), "out", (shape.head_src(layer, head),))
    toks = tokens(4)
    store = {}

    def grab(module, args):
        store["delta"] = _head_result(module, args[0], head, cfg.d_head)

    def subtract(module, args):
        return (args[0] - store["delta"],)

    want = _hooked_logits(
        ref, toks, [(_head_in(ref, name, layer), grab), (_final_norm(ref, name), subtract)]
    )
    got = _masked_logits(model, toks, mask)
    assert np.abs(want - torch_logits(ref, toks)).max() > 1e-2  # the patch matters
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_gemma2_head_to_output_edge_through_post_norm(saved):
    """Gemma-2: heads are the pre-norm results, and each receiver applies the layer's
    post-attention norm to its own mixed sum of them. Removing `head (0, h) -> output` (zero
    ablation) = replacing, in the final residual only, `post_norm(attn_0)` by
    `post_norm(attn_0 - z_h W_O[h])`; the next layer still reads the clean sum."""
    folder, ref = saved["gemma2"]
    model = load_hf(folder)
    cfg, shape = model.cfg, model.graph_shape
    head = 1
    mask = _set(EdgeMask.full(shape), "out", (shape.head_src(0, head),))
    o_proj = ref.model.layers[0].self_attn.o_proj
    post = ref.model.layers[0].post_attention_layernorm
    store = {}

    def grab(module, args, output):
        head_out = _head_result(module, args[0], head, cfg.d_head)
        store["delta"] = post(output - head_out) - post(output)

    def patch(module, args):
        return (args[0] + store["delta"],)

    toks = tokens(8)
    handles = [o_proj.register_forward_hook(grab),
               ref.model.norm.register_forward_pre_hook(patch)]  # fmt: skip
    try:
        want = torch_logits(ref, toks)
    finally:
        for h in handles:
            h.remove()
    assert np.abs(want - torch_logits(ref, toks)).max() > 1e-2
    np.testing.assert_allclose(_masked_logits(model, toks, mask), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_v_input_edge_of_one_query_head(saved, name):
    """Layer 0: removing `embed -> v input of query head h` (zero ablation, no v bias) makes
    that head's values zero, so its output `z_h` is zero -- and only its: with GQA the key/value
    head it shares with another query head still serves that one. In torch: zero `z_h` before
    `o_proj` (Gemma-2: before the post-attention norm sees the heads' sum)."""
    folder, ref = saved[name]
    model = load_hf(folder)
    cfg, shape = model.cfg, model.graph_shape
    assert cfg.kv_heads < cfg.n_heads
    head = 1
    mask = _set(EdgeMask.full(shape), "v", (0, head, 0))
    e = cfg.d_head

    def zero_head(module, args):
        z = args[0].clone()
        z[..., head * e : (head + 1) * e] = 0.0
        return (z,)

    toks = tokens(5)
    want = _hooked_logits(ref, toks, [(_head_in(ref, name, 0), zero_head)])
    assert np.abs(want - torch_logits(ref, toks)).max() > 1e-2
    np.testing.assert_allclose(_masked_logits(model, toks, mask), want, atol=1e-4, rtol=0)


def test_parallel_block_mlp_edge(saved):
    """GPT-NeoX parallel blocks: removing `head (0, h) -> MLP 1 input` (zero ablation) =
    subtracting the head's result from what layer 1's MLP norm reads, in torch; layer 0's MLP
    has no edge from layer 0's heads at all."""
    folder, ref = saved["neox"]
    model = load_hf(folder)
    cfg, shape = model.cfg, model.graph_shape
    assert shape.parallel
    assert shape.n_src_before_mlp(0) == 1  # only the embedding
    head = 2
    mask = _set(EdgeMask.full(shape), "mlp", (1, shape.head_src(0, head)))
    store = {}

    def grab(module, args):
        store["delta"] = _head_result(module, args[0], head, cfg.d_head)

    def subtract(module, args):
        return (args[0] - store["delta"],)

    layer1 = ref.gpt_neox.layers[1]
    toks = tokens(6)
    want = _hooked_logits(
        ref, toks, [(_head_in(ref, "neox", 0), grab), (layer1.post_attention_layernorm, subtract)]
    )
    assert np.abs(want - torch_logits(ref, toks)).max() > 1e-2
    np.testing.assert_allclose(_masked_logits(model, toks, mask), want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# Real configurations: edge counts from config.json alone

# The fields of the public config.json files (facts from the Hub).
PYTHIA_70M = {
    "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
    "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
    "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
    "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
    "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
    "use_parallel_residual": True, "vocab_size": 50304,
}  # fmt: skip
PYTHIA_160M = {**PYTHIA_70M, "hidden_size": 768, "intermediate_size": 3072,
               "num_attention_heads": 12, "num_hidden_layers": 12}  # fmt: skip
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
    "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip
GEMMA2_2B = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": [1, 107], "final_logit_softcapping": 30.0, "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304, "initializer_range": 0.02, "intermediate_size": 9216,
    "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "sliding_window": 4096, "torch_dtype": "float32", "transformers_version": "4.42.4",
    "use_cache": True, "vocab_size": 256000,
}  # fmt: skip
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}  # fmt: skip


def _count_edges(L, H, parallel):
    """Edge count by enumeration: every receiver (per query head: q, k, v inputs; the MLP
    input; the output) times the sources upstream of it, plus the 3 direct edges per head."""
    n = 0
    for layer in range(L):
        before = 1 + layer * (H + 1)  # embedding + earlier layers' heads and MLPs
        n += 3 * H * before + 3 * H  # q/k/v inputs, and q_input -> q etc.
        n += before + (0 if parallel else H)  # the MLP input
    return n + 1 + L * (H + 1)  # the output


REAL = {
    # name: (config, layers, heads, kv heads, d_model, d_head, parallel, edges)
    "pythia-70m": (PYTHIA_70M, 6, 8, 8, 512, 64, True, 3724),
    "pythia-160m": (PYTHIA_160M, 12, 12, 12, 768, 64, True, 32779),
    "qwen2.5-0.5b": (QWEN25_05B, 24, 14, 2, 896, 64, False, 180757),
    "gemma-2-2b": (GEMMA2_2B, 26, 8, 4, 2304, 256, False, 74842),
    "llama-3.1-8b": (LLAMA31_8B, 32, 32, 8, 4096, 128, False, 1595953),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_config_edge_counts(name):
    hf, L, H, K, d, e, parallel, edges = REAL[name]
    cfg = hf_transformer_config(hf)
    assert (cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head) == (L, H, K, d, e)
    assert cfg.parallel_attn_mlp == parallel
    assert _count_edges(L, H, parallel) == edges
    assert cfg.graph_shape.n_edges() == edges
    assert cfg.graph_shape == GraphShape(L, H, True, parallel=parallel)


def test_real_config_features():
    pythia = hf_transformer_config(PYTHIA_70M)
    assert pythia.rotary_dim == 16 and pythia.act_fn == "gelu" and pythia.normalization == "LN"
    qwen = hf_transformer_config(QWEN25_05B)
    assert qwen.sliding_window is None  # use_sliding_window: false
    assert qwen.rope_theta == 1e6 and qwen.normalization == "RMS" and qwen.gated_mlp
    gemma = hf_transformer_config(GEMMA2_2B)
    assert gemma.windows() == (4096, None) * 13
    assert gemma.attn_scale == 16.0 and gemma.attn_softcap == 50.0 and gemma.final_softcap == 30.0
    llama = hf_transformer_config(LLAMA31_8B)
    assert dict(llama.rope_scaling)["factor"] == 8.0 and llama.rope_theta == 500000.0


def test_transformers5_config_format():
    """transformers 5 writes `rope_parameters` (theta and scaling together) and `layer_types`;
    the mapping equals the transformers-4 form of the same model."""
    old = hf_transformer_config(LLAMA31_8B)
    new = dict(LLAMA31_8B)
    scaling = new.pop("rope_scaling")
    new["rope_parameters"] = {**scaling, "rope_theta": new.pop("rope_theta")}
    assert hf_transformer_config(new) == old
    neox = dict(PYTHIA_70M)
    neox.pop("rotary_pct"), neox.pop("rotary_emb_base")
    neox["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "partial_rotary_factor": 0.25}  # fmt: skip
    assert hf_transformer_config(neox) == hf_transformer_config(PYTHIA_70M)
    gemma = dict(GEMMA2_2B, layer_types=["full_attention", "sliding_attention"] * 13)
    assert hf_transformer_config(gemma).windows() == (None, 4096) * 13


# ----------------------------------------------------------------------------------------------
# Bad input: never a silently different model


def _error(hf, match):
    with pytest.raises(ValueError, match=match):
        hf_transformer_config(hf)


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ValueError) as err:
        hf_transformer_config({"architectures": ["PhiForCausalLM"], "model_type": "phi"})
    message = str(err.value)
    assert "PhiForCausalLM" in message
    assert all(arch in message for arch in SUPPORTED_ARCHITECTURES)


@pytest.mark.parametrize(
    "base, change, match",
    [
        (LLAMA31_8B, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
        (LLAMA31_8B, {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "'dynamic'"),
        (LLAMA31_8B, {"hidden_act": "gelu_fast"}, 'hidden_act="gelu_fast"'),
        (LLAMA31_8B, {"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
        (LLAMA31_8B, {"new_feature": 3}, "unknown key 'new_feature'"),
        (QWEN25_05B, {"use_mrope": True}, "use_mrope=true"),
        (QWEN25_05B, {"layer_types": ["full_attention"] * 3}, "layer_types must list 24"),
        (GEMMA2_2B, {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        (GEMMA2_2B, {"hidden_activation": "relu"}, 'hidden_activation="relu"'),
        (PYTHIA_70M, {"use_parallel_residual": "yes"}, "use_parallel_residual must be true"),
        (PYTHIA_70M, {"rotary_pct": 0.01}, "rotary dimension 0"),
        (PYTHIA_70M, {"head_dim": 32}, "head_dim=32 must equal"),
        (PYTHIA_70M, {"sliding_window": 16}, "unknown key 'sliding_window'"),
        (GEMMA2_2B, {"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        (LLAMA31_8B, {"model_type": "mistral"}, "does not match"),
    ],
)
def test_unsupported_settings_are_named(base, change, match):
    _error({**copy.deepcopy(base), **change}, match)


def test_qwen2_sliding_window_per_layer():
    hf = dict(QWEN25_05B, use_sliding_window=True, sliding_window=128, max_window_layers=20)
    assert hf_transformer_config(hf).windows() == (None,) * 20 + (128,) * 4


def test_missing_and_wrong_tensors(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder, _ = saved["gemma2"]
    copy_ = tmp_path / "gemma2"
    shutil.copytree(folder, copy_)
    tensors = load_file(copy_ / "model.safetensors")
    tensors.pop("model.layers.1.post_feedforward_layernorm.weight")
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, copy_ / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_hf(copy_)
    assert "model.layers.1.post_feedforward_layernorm.weight" in str(err.value)
    assert "model.layers.0.self_attn.q_proj.weight: shape (3, 3)" in str(err.value)


def test_buffers_and_redundant_head_are_ignored(saved, tmp_path):
    """Older exports carry buffers (`rotary_emb.inv_freq`, NeoX's `attention.bias` /
    `masked_bias`) and tied models sometimes a copy of the embedding as the head: ignored."""
    from safetensors.numpy import load_file, save_file

    folder, ref = saved["neox_sequential"]  # tied
    copy_ = tmp_path / "neox"
    shutil.copytree(folder, copy_)
    tensors = load_file(copy_ / "model.safetensors")
    p = "gpt_neox.layers.0.attention."
    tensors[p + "bias"] = np.tril(np.ones((1, 1, 4, 4), bool))
    tensors[p + "masked_bias"] = np.array(-1e9, np.float32)
    tensors[p + "rotary_emb.inv_freq"] = np.ones(2, np.float32)
    tensors["embed_out.weight"] = tensors["gpt_neox.embed_in.weight"]
    save_file(tensors, copy_ / "model.safetensors")
    toks = tokens(9)
    np.testing.assert_allclose(
        jacdc_logits(load_hf(copy_), toks), torch_logits(ref, toks), atol=1e-4, rtol=0
    )


def test_hub_id_download(monkeypatch, saved):
    """A Hub id goes through `snapshot_download` (config, safetensors, index, tokenizer)."""
    import huggingface_hub

    folder, ref = saved["llama"]  # sharded
    calls = []

    def fake(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model = load_hf("meta-llama/Llama-tiny")
    assert calls[0][0] == "meta-llama/Llama-tiny"
    assert {"config.json", "*.safetensors", "model.safetensors.index.json"} <= set(calls[0][1])
    toks = tokens(10)
    np.testing.assert_allclose(jacdc_logits(model, toks), torch_logits(ref, toks), atol=1e-4)


def test_missing_files(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="No config.json"):
        load_hf(tmp_path)
    shutil.copy(saved["neox"][0] / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_hf(tmp_path)


def test_hub_id_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="'EleutherAI/pythia-70m' is not a local folder") as err:
        load_hf("EleutherAI/pythia-70m")
    assert "hf download EleutherAI/pythia-70m" in str(err.value)


# ----------------------------------------------------------------------------------------------
# tokenizer.json


def test_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    corpus = ["When Mary and John went to the store, John gave a drink to Mary."] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", 0)])  # fmt: skip
    tok.save(str(tmp_path / "tokenizer.json"))

    wrapped = load_hf_tokenizer(tmp_path)
    text = "When John went to the store, Mary gave a drink to John."
    ids = wrapped.encode(text)
    assert ids == tok.encode(text, add_special_tokens=False).ids
    assert 0 not in ids and len(ids) < len(text.encode())  # merges happened, no BOS
    assert wrapped.decode(ids) == text
    with_bos = load_hf_tokenizer(tmp_path / "tokenizer.json", add_special_tokens=True)
    assert with_bos.encode(text) == [0, *ids]
    assert wrapped.token_to_id("<bos>") == 0 and wrapped.vocab_size == tok.get_vocab_size()
    with pytest.raises(ValueError, match="outside this tokenizer's vocabulary"):
        wrapped.decode([wrapped.vocab_size])


def test_tokenizer_errors(tmp_path):
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        load_hf_tokenizer(tmp_path)
