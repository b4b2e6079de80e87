"""TransformerLens checkpoint loaders (redwood_attn_2l, attn-only-4l), against an independent numpy
forward pass, plus the error paths and the hub file selection."""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacdc.models import (
    KNOWN_CONFIGS,
    TransformerConfig,
    clean_run,
    from_transformer_lens_state_dict,
    load_attn_only_4l,
    load_redwood_attn_2l,
    transformer_lens_config,
)


torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _allow_rank_promotion():
    # The core forward pass (models/_transformer.py: LayerNorm, biases) relies on NumPy-style rank
    # promotion, which tests/conftest.py turns into an error; the loaders do no broadcasting.
    with jax.numpy_rank_promotion("allow"):
        yield


# Same structure as the real models, tiny sizes.
REDWOOD_LIKE = TransformerConfig(
    n_layers=2,
    n_heads=3,
    d_model=12,
    d_head=4,
    d_mlp=None,
    d_vocab=23,
    n_ctx=10,
    positional="shortformer",
    ln_eps=1e-5,
)
ATTN4L_LIKE = TransformerConfig(
    n_layers=4, n_heads=2, d_model=8, d_head=4, d_mlp=None, d_vocab=17, n_ctx=12
)

# ArthurConmy/redwood_attn_2l config.json, as shown on the hub (duplicate "final_rms" dropped).
REDWOOD_HUB_CONFIG = {
    "act_fn": "gelu_new",
    "n_layers": 2,
    "d_model": 256,
    "n_ctx": 2048,
    "d_head": 32,
    "d_mlp": -1,
    "model_name": "custom",
    "n_heads": 8,
    "d_vocab": 50259,
    "eps": 1e-05,
    "use_attn_result": True,
    "use_attn_scale": True,
    "use_split_qkv_input": False,
    "use_local_attn": False,
    "from_checkpoint": False,
    "init_mode": "gpt2",
    "normalization_type": "LN",
    "device": "cuda",
    "attention_dir": "causal",
    "attn_only": True,
    "initializer_range": 0.05,
    "init_weights": False,
    "scale_attn_by_inverse_layer_idx": False,
    "positional_embedding_type": "shortformer",
    "shortformer_pos": True,
    "final_rms": False,
    "d_vocab_out": 50259,
    "parallel_attn_mlp": False,
    "n_params": 524288,
    "use_hook_tokens": False,
    "tokenizer_name": "ArthurConmy/redwood_tokenizer",
}


def tl_state_dict(cfg, seed=0, *, buffers=True):
    """A random TL state dict of torch tensors, with the buffers early-2023 TL saved."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)

    d, e, H = cfg.d_model, cfg.d_head, cfg.n_heads
    sd = {"embed.W_E": randn(cfg.d_vocab, d), "pos_embed.W_pos": randn(cfg.n_ctx, d)}
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        sd[p + "ln1.w"] = 1 + randn(d, scale=0.2)
        sd[p + "ln1.b"] = randn(d, scale=0.2)
        for x in "QKV":
            sd[p + f"attn.W_{x}"] = randn(H, d, e, scale=d**-0.5)
            sd[p + f"attn.b_{x}"] = randn(H, e, scale=0.3)
        sd[p + "attn.W_O"] = randn(H, e, d, scale=(H * e) ** -0.5)
        sd[p + "attn.b_O"] = randn(d, scale=0.3)
        if buffers:
            sd[p + "attn.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
            sd[p + "attn.IGNORE"] = torch.tensor(-1e5)
    sd["ln_final.w"] = 1 + randn(d, scale=0.2)
    sd["ln_final.b"] = randn(d, scale=0.2)
    sd["unembed.W_U"] = randn(d, cfg.d_vocab, scale=d**-0.5)
    sd["unembed.b_U"] = randn(cfg.d_vocab, scale=0.3)
    return sd


def numpy_forward(sd, cfg, tokens):
    """Independent float64 TransformerLens forward for LN attention-only models: LayerNorm before
    each attention layer and the unembedding; shortformer positions are added to the q and k
    inputs after LayerNorm (and never to the residual stream); causal attention."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items() if "mask" not in k}

    def layer_norm(x, w, b):
        x = x - x.mean(-1, keepdims=True)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.ln_eps) * w + b

    seq = tokens.shape[0]
    pos = sd["pos_embed.W_pos"][:seq]
    resid = sd["embed.W_E"][tokens]
    if cfg.positional == "standard":
        resid = resid + pos
    causal = np.tril(np.ones((seq, seq), bool))
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        x = layer_norm(resid, sd[p + "ln1.w"], sd[p + "ln1.b"])
        x_qk = x + pos if cfg.positional == "shortformer" else x
        q = np.einsum("sd,hde->hse", x_qk, sd[p + "attn.W_Q"]) + sd[p + "attn.b_Q"][:, None]
        k = np.einsum("sd,hde->hse", x_qk, sd[p + "attn.W_K"]) + sd[p + "attn.b_K"][:, None]
        v = np.einsum("sd,hde->hse", x, sd[p + "attn.W_V"]) + sd[p + "attn.b_V"][:, None]
        scores = np.einsum("hse,hte->hst", q, k) / np.sqrt(cfg.d_head)
        scores = np.where(causal, scores, -np.inf)
        pattern = np.exp(scores - scores.max(-1, keepdims=True))
        pattern /= pattern.sum(-1, keepdims=True)
        z = np.einsum("hst,hte->hse", pattern, v)
        resid = resid + np.einsum("hse,hed->sd", z, sd[p + "attn.W_O"]) + sd[p + "attn.b_O"]
    x = layer_norm(resid, sd["ln_final.w"], sd["ln_final.b"])
    return x @ sd["unembed.W_U"] + sd["unembed.b_U"]


def _tokens(cfg, batch=3, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, (batch, cfg.n_ctx))


def _check_against_numpy(model, sd, cfg):
    tokens = _tokens(cfg)
    logits, _ = clean_run(model, jnp.asarray(tokens))
    ref = np.stack([numpy_forward(sd, cfg, t) for t in tokens])
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "loader, cfg",
    [(load_redwood_attn_2l, REDWOOD_LIKE), (load_attn_only_4l, ATTN4L_LIKE)],
    ids=["redwood_attn_2l", "attn-only-4l"],
)
def test_pth_checkpoint_matches_numpy(tmp_path, loader, cfg):
    sd = tl_state_dict(cfg)
    path = tmp_path / "model_final.pth"
    torch.save(sd, path)
    model = loader(path, cfg=cfg)
    assert model.cfg == dataclasses.replace(cfg, fold_value_biases=True)  # the TL default
    _check_against_numpy(model, sd, cfg)


def test_shortformer_positions_matter():
    # The reference must distinguish the two positional schemes, or the test above proves little.
    sd = {k: v.numpy() for k, v in tl_state_dict(REDWOOD_LIKE).items()}
    tokens = _tokens(REDWOOD_LIKE)[0]
    standard = TransformerConfig(**{**REDWOOD_LIKE.__dict__, "positional": "standard"})
    a = numpy_forward(sd, REDWOOD_LIKE, tokens)
    b = numpy_forward(sd, standard, tokens)
    assert np.abs(a - b).max() > 1e-2
    model = from_transformer_lens_state_dict(sd, standard)
    _check_against_numpy(model, sd, standard)


def test_numpy_and_bfloat16_inputs():
    sd = tl_state_dict(ATTN4L_LIKE, buffers=False)
    as_numpy = {k: v.numpy() for k, v in sd.items()}
    del as_numpy["unembed.b_U"]  # optional: zeros
    model = from_transformer_lens_state_dict(as_numpy, ATTN4L_LIKE)
    np.testing.assert_array_equal(np.asarray(model.b_u), 0.0)
    _check_against_numpy(model, {**as_numpy, "unembed.b_U": np.zeros(17)}, ATTN4L_LIKE)
    half = {k: v.bfloat16() for k, v in sd.items()}
    model = from_transformer_lens_state_dict(half, ATTN4L_LIKE)
    np.testing.assert_array_equal(
        np.asarray(model.blocks[0].w_q), half["blocks.0.attn.W_Q"].float().numpy()
    )


def test_other_file_formats(tmp_path):
    from safetensors.numpy import save_file

    sd = {k: v.numpy() for k, v in tl_state_dict(REDWOOD_LIKE, buffers=False).items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    np.savez(tmp_path / "m.npz", **sd)
    for name in ("m.safetensors", "m.npz"):
        model = load_redwood_attn_2l(tmp_path / name, cfg=REDWOOD_LIKE)
        np.testing.assert_array_equal(np.asarray(model.w_pos), sd["pos_embed.W_pos"])


# ----------------------------------------------------------------------------------------------
# Configs


def test_known_configs():
    r, a = KNOWN_CONFIGS["redwood_attn_2l"], KNOWN_CONFIGS["attn-only-4l"]
    assert (r.n_layers, r.n_heads, r.d_model, r.d_head, r.d_vocab, r.n_ctx) == (
        2,
        8,
        256,
        32,
        50259,
        2048,
    )
    assert r.d_mlp is None and r.positional == "shortformer" and r.normalization == "LN"
    assert (a.n_layers, a.n_heads, a.d_model, a.d_head, a.d_vocab, a.n_ctx) == (
        4,
        8,
        512,
        64,
        48262,
        2048,
    )
    assert a.d_mlp is None and a.normalization == "LN"
    # The edge counts of the ACDC paper.
    assert r.graph_shape.n_edges() == 305
    assert a.graph_shape.n_edges() == 1377


def test_redwood_hub_config_json():
    assert transformer_lens_config(REDWOOD_HUB_CONFIG) == KNOWN_CONFIGS["redwood_attn_2l"]


def test_neel_style_config_json():
    neel = {  # the format of NeelNanda/*_C4_Code config.json (training keys trimmed)
        "n_layers": 4,
        "d_model": 512,
        "d_mlp": 2048,
        "d_head": 64,
        "n_heads": 8,
        "lr_hidden": 0.002,
        "seed": 1,
        "normalization": "LN",
        "n_ctx": 2048,
        "d_vocab": 48262,
        "tokenizer_name": "NeelNanda/gpt-neox-tokenizer-digits",
        "act_fn": "attn_only",
        "shortformer_pos": False,
        "attn_only": True,
        "ln_eps": 1e-05,
    }
    assert transformer_lens_config(neel) == KNOWN_CONFIGS["attn-only-4l"]
    cfg = transformer_lens_config({**neel, "shortformer_pos": True, "n_ctx": 1024})
    assert cfg.positional == "shortformer" and cfg.n_ctx == 1024
    gelu = transformer_lens_config({**neel, "attn_only": False, "act_fn": "gelu"})
    assert gelu.d_mlp == 2048 and gelu.act_fn == "gelu"


def test_unsupported_tl_config():
    bad = {
        **REDWOOD_HUB_CONFIG,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "shortformer_pos": False,
        "final_rms": True,
    }
    with pytest.raises(ValueError) as info:
        transformer_lens_config(bad)
    msg = str(info.value)
    assert "normalization 'RMS'" in msg and "'rotary'" in msg and "final_rms=True" in msg


# ----------------------------------------------------------------------------------------------
# Errors


def test_gpt2_state_dict_is_rejected():
    rng = np.random.default_rng(0)
    hf = {
        "transformer.wte.weight": rng.normal(size=(17, 8)),
        "transformer.wpe.weight": rng.normal(size=(12, 8)),
        "transformer.h.0.attn.c_attn.weight": rng.normal(size=(8, 24)),
        "transformer.ln_f.weight": np.ones(8),
    }
    with pytest.raises(ValueError, match="load_gpt2") as info:
        from_transformer_lens_state_dict(hf, ATTN4L_LIKE)
    assert "missing tensors" in str(info.value) and "unknown tensors (4)" in str(info.value)


def test_three_layers_for_four_layer_config(tmp_path):
    three = TransformerConfig(**{**ATTN4L_LIKE.__dict__, "n_layers": 3})
    torch.save(tl_state_dict(three), tmp_path / "model_final.pth")
    with pytest.raises(ValueError, match="has 3 layers \\(blocks 0..2\\), the config 4") as info:
        load_attn_only_4l(tmp_path / "model_final.pth", cfg=ATTN4L_LIKE)
    assert "blocks.3.attn.W_Q" in str(info.value)


def test_real_config_rejects_tiny_checkpoint(tmp_path):
    torch.save(tl_state_dict(ATTN4L_LIKE), tmp_path / "model_final.pth")
    with pytest.raises(ValueError, match="embed.W_E: shape \\(17, 8\\), expected \\(48262, 512\\)"):
        load_attn_only_4l(tmp_path / "model_final.pth")  # KNOWN_CONFIGS["attn-only-4l"]


def test_unknown_missing_and_shape_errors_together():
    sd = {k: v.numpy() for k, v in tl_state_dict(REDWOOD_LIKE).items()}
    del sd["blocks.1.attn.b_V"]
    sd["blocks.0.mlp.W_in"] = np.zeros((12, 48))
    sd["blocks.0.attn.W_O"] = np.zeros((3, 4, 13))
    with pytest.raises(ValueError) as info:
        from_transformer_lens_state_dict(sd, REDWOOD_LIKE)
    msg = str(info.value)
    assert "missing tensors (1): blocks.1.attn.b_V" in msg
    assert "unknown tensors (1): blocks.0.mlp.W_in" in msg
    assert "blocks.0.attn.W_O: shape (3, 4, 13), expected (3, 4, 12)" in msg


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file or folder"):
        load_redwood_attn_2l(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_redwood_attn_2l(tmp_path)  # an empty folder


def test_truncated_and_non_state_dict_pth(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save(tl_state_dict(REDWOOD_LIKE), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="Could not read .* as a torch state dict"):
        load_redwood_attn_2l(path, cfg=REDWOOD_LIKE)
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_redwood_attn_2l(path, cfg=REDWOOD_LIKE)


def test_pth_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "model_final.pth"
    torch.save(tl_state_dict(REDWOOD_LIKE), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match='pip install "jacdc\\[torch\\]"'):
        load_redwood_attn_2l(path, cfg=REDWOOD_LIKE)


# ----------------------------------------------------------------------------------------------
# Folders and the hub (huggingface_hub is replaced by fakes: no network in tests)


def test_folder_source_picks_final_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save(tl_state_dict(REDWOOD_LIKE, seed=1), tmp_path / "checkpoints" / "x_100.pth")
    sd = tl_state_dict(REDWOOD_LIKE, seed=2)
    torch.save(sd, tmp_path / "model_final.pth")
    model = load_redwood_attn_2l(tmp_path, cfg=REDWOOD_LIKE)
    np.testing.assert_array_equal(np.asarray(model.w_e), sd["embed.W_E"].numpy())


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub

    store = tmp_path / "hub"
    store.mkdir()
    downloads = []

    def list_repo_files(repo_id, **kwargs):
        return sorted(p.name for p in store.iterdir())

    def hf_hub_download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        return str(store / filename)

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return store, downloads


def test_hub_prefers_final_pth(fake_hub):
    store, downloads = fake_hub
    sd = tl_state_dict(REDWOOD_LIKE, seed=3)
    torch.save(sd, store / "model_final.pth")
    torch.save(tl_state_dict(REDWOOD_LIKE, seed=4), store / "et_model_state_dict.pt")
    torch.save(torch.zeros(3), store / "dataset.pt")
    model = load_redwood_attn_2l(cfg=REDWOOD_LIKE)
    assert downloads == [("ArthurConmy/redwood_attn_2l", "model_final.pth")]
    np.testing.assert_array_equal(np.asarray(model.w_e), sd["embed.W_E"].numpy())


def test_hub_falls_back_to_et_model_state_dict(fake_hub):
    store, downloads = fake_hub
    torch.save(tl_state_dict(REDWOOD_LIKE), store / "et_model_state_dict.pt")
    load_redwood_attn_2l(cfg=REDWOOD_LIKE)
    assert downloads == [("ArthurConmy/redwood_attn_2l", "et_model_state_dict.pt")]


def test_hub_config_json_is_checked(fake_hub):
    store, downloads = fake_hub
    torch.save(tl_state_dict(ATTN4L_LIKE), store / "model_final.pth")
    tiny = {"n_layers": 4, "n_heads": 2, "d_model": 8, "d_head": 4, "d_mlp": 32}
    (store / "config.json").write_text(
        json.dumps({**tiny, "n_ctx": 12, "d_vocab": 17, "attn_only": True, "normalization": "LN"})
    )
    with pytest.raises(ValueError, match="does not describe attn-only-4l: n_heads: 2"):
        load_attn_only_4l()
    assert downloads[0] == ("NeelNanda/Attn_Only_4L512W_C4_Code", "model_final.pth")


def test_hub_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    with pytest.raises(OSError, match="hf download NeelNanda/Attn_Only_4L512W_C4_Code"):
        load_attn_only_4l()
    with pytest.raises(OSError, match="Could not download redwood_attn_2l"):
        load_redwood_attn_2l()
