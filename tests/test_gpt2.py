"""GPT-2 loading: tensor layouts, parity with `transformers`, and every error path."""

import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jacdc import EdgeMask
from jacdc.models import clean_run, empty_sources, load_gpt2
from jacdc.models._gpt2 import (
    c_attn_bias_to_qkv,
    c_attn_weight_to_qkv,
    c_proj_weight_to_w_o,
    gpt2_config,
    qkv_to_c_attn_bias,
    qkv_to_c_attn_weight,
    w_o_to_c_proj_weight,
    w_u_to_wte,
    wte_to_w_u,
)


N_LAYER, N_HEAD, N_EMBD, VOCAB, N_POS = 2, 2, 16, 50, 16


@pytest.fixture(autouse=True)
def _allow_rank_promotion():
    # The core forward pass (models/_transformer.py: LayerNorm, biases) relies on NumPy-style rank
    # promotion, which tests/conftest.py turns into an error. The loaders under test here do no
    # broadcasting of their own, so allow it for these tests.
    with jax.numpy_rank_promotion("allow"):
        yield


BASE_CONFIG = {
    "activation_function": "gelu_new",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.1,
    "bos_token_id": 0,
    "embd_pdrop": 0.1,
    "eos_token_id": 0,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_ctx": N_POS,
    "n_embd": N_EMBD,
    "n_head": N_HEAD,
    "n_inner": None,
    "n_layer": N_LAYER,
    "n_positions": N_POS,
    "resid_pdrop": 0.1,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "summary_activation": None,
    "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": VOCAB,
}


def _random_hf_tensors(rng, n_layer=N_LAYER, d=N_EMBD, m=4 * N_EMBD, prefix="transformer."):
    """GPT-2 weights in Hugging Face names and Conv1D layouts, all non-trivial (biases too)."""
    t = {
        "wte.weight": rng.normal(size=(VOCAB, d)),
        "wpe.weight": rng.normal(size=(N_POS, d)),
        "ln_f.weight": 1 + 0.1 * rng.normal(size=(d,)),
        "ln_f.bias": 0.1 * rng.normal(size=(d,)),
    }
    for i in range(n_layer):
        p = f"h.{i}."
        t.update(
            {
                p + "ln_1.weight": 1 + 0.1 * rng.normal(size=(d,)),
                p + "ln_1.bias": 0.1 * rng.normal(size=(d,)),
                p + "attn.c_attn.weight": rng.normal(size=(d, 3 * d)) / np.sqrt(d),
                p + "attn.c_attn.bias": 0.1 * rng.normal(size=(3 * d,)),
                p + "attn.c_proj.weight": rng.normal(size=(d, d)) / np.sqrt(d),
                p + "attn.c_proj.bias": 0.1 * rng.normal(size=(d,)),
                p + "ln_2.weight": 1 + 0.1 * rng.normal(size=(d,)),
                p + "ln_2.bias": 0.1 * rng.normal(size=(d,)),
                p + "mlp.c_fc.weight": rng.normal(size=(d, m)) / np.sqrt(d),
                p + "mlp.c_fc.bias": 0.1 * rng.normal(size=(m,)),
                p + "mlp.c_proj.weight": rng.normal(size=(m, d)) / np.sqrt(m),
                p + "mlp.c_proj.bias": 0.1 * rng.normal(size=(d,)),
                # the causal-mask buffers that old exports include
                p + "attn.bias": np.tril(np.ones((N_POS, N_POS)))[None, None],
            }
        )
    return {prefix + k: np.asarray(v, np.float32) for k, v in t.items()}


def _write_folder(path, config, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.fixture
def folder(tmp_path):
    """A torch-free GPT-2 folder with random weights."""
    return _write_folder(
        tmp_path / "gpt2", BASE_CONFIG, _random_hf_tensors(np.random.default_rng(0))
    )


# ----------------------------------------------------------------------------------------------
# Tensor layouts


def test_c_attn_weight_layout():
    rng = np.random.default_rng(1)
    H, d, e = 3, 6, 2
    w = rng.normal(size=(d, 3 * H * e))
    w_q, w_k, w_v = c_attn_weight_to_qkv(w, H)
    assert w_q.shape == w_k.shape == w_v.shape == (H, d, e)
    np.testing.assert_array_equal(qkv_to_c_attn_weight(w_q, w_k, w_v), w)
    np.testing.assert_array_equal(
        c_attn_weight_to_qkv(qkv_to_c_attn_weight(w_q, w_k, w_v), H)[2], w_v
    )
    # Conv1D arithmetic: y = x @ W is [q | k | v], each head-major.
    x = rng.normal(size=(d,))
    y = (x @ w).reshape(3, H, e)
    for j, wj in enumerate((w_q, w_k, w_v)):
        np.testing.assert_allclose(np.einsum("d,hde->he", x, wj), y[j], rtol=1e-12)


def test_c_attn_bias_layout():
    rng = np.random.default_rng(2)
    H, e = 3, 2
    b = rng.normal(size=(3 * H * e,))
    b_q, b_k, b_v = c_attn_bias_to_qkv(b, H)
    assert b_q.shape == (H, e)
    np.testing.assert_array_equal(qkv_to_c_attn_bias(b_q, b_k, b_v), b)
    np.testing.assert_array_equal(b_k, b[H * e : 2 * H * e].reshape(H, e))


def test_c_proj_weight_layout():
    rng = np.random.default_rng(3)
    H, e, d = 3, 2, 5
    w = rng.normal(size=(H * e, d))
    w_o = c_proj_weight_to_w_o(w, H)
    assert w_o.shape == (H, e, d)
    np.testing.assert_array_equal(w_o_to_c_proj_weight(w_o), w)
    # Conv1D arithmetic: concatenated head outputs z (H*e,) times W equals the sum of heads.
    z = rng.normal(size=(H, e))
    np.testing.assert_allclose(z.reshape(-1) @ w, np.einsum("he,hed->d", z, w_o), rtol=1e-12)


def test_unembed_layout():
    wte = np.random.default_rng(4).normal(size=(7, 3))
    w_u = wte_to_w_u(wte)
    assert w_u.shape == (3, 7)
    np.testing.assert_array_equal(w_u_to_wte(w_u), wte)
    x = np.arange(3.0)
    np.testing.assert_allclose(x @ w_u, wte @ x)


def test_layout_errors():
    with pytest.raises(ValueError, match="not 3 \\* n_head"):
        c_attn_weight_to_qkv(np.zeros((4, 10)), 2)
    with pytest.raises(ValueError, match="not n_head"):
        c_proj_weight_to_w_o(np.zeros((5, 4)), 2)


# ----------------------------------------------------------------------------------------------
# Parity with transformers


def _hf_model(tmp_path, **overrides):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        vocab_size=VOCAB,
        n_positions=N_POS,
        bos_token_id=0,
        eos_token_id=0,
        **overrides,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random everything, so that a misplaced bias or LN weight shows
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    path = tmp_path / "hf"
    model.save_pretrained(path)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, N_POS))
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens)).logits.numpy()
    return path, tokens, logits


@pytest.fixture(scope="module")
def hf_default(tmp_path_factory):
    return _hf_model(tmp_path_factory.mktemp("hf_default"))


def test_parity_with_transformers(hf_default):
    path, tokens, ref = hf_default
    logits, _ = clean_run(load_gpt2(path), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        {"activation_function": "relu", "n_inner": 24, "tie_word_embeddings": False},
        {"activation_function": "gelu", "scale_attn_weights": False, "layer_norm_epsilon": 1e-3},
    ],
    ids=["relu-untied", "gelu-unscaled"],
)
def test_parity_variants(tmp_path, overrides):
    path, tokens, ref = _hf_model(tmp_path, **overrides)
    logits, _ = clean_run(load_gpt2(path), jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)


def test_parity_without_prefix(hf_default, tmp_path):
    path, tokens, ref = hf_default
    from safetensors.numpy import load_file

    tensors = load_file(str(path / "model.safetensors"))
    assert any(k.startswith("transformer.") for k in tensors)
    stripped = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(path / "config.json", bare / "config.json")
    save_file(stripped, str(bare / "model.safetensors"))
    model = load_gpt2(str(bare))

    @eqx.filter_jit
    def run(model, tokens):
        mask = EdgeMask.full(model.graph_shape)
        empty = empty_sources(model.cfg, tokens.shape[1], batch=(tokens.shape[0],))
        return jax.vmap(model, in_axes=(0, None, 0))(tokens, mask, empty)[0]

    np.testing.assert_allclose(
        np.asarray(run(model, jnp.asarray(tokens))), ref, atol=1e-4, rtol=1e-4
    )


def test_config_mapping():
    cfg = gpt2_config({**BASE_CONFIG, "n_inner": 40, "layer_norm_epsilon": 1e-3})
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head) == (2, 2, 16, 8)
    assert (cfg.d_mlp, cfg.d_vocab, cfg.n_ctx, cfg.ln_eps) == (40, VOCAB, N_POS, 1e-3)
    assert cfg.act_fn == "gelu_new" and cfg.positional == "standard" and cfg.causal
    assert gpt2_config(BASE_CONFIG).d_mlp == 4 * N_EMBD
    assert gpt2_config({**BASE_CONFIG, "scale_attn_weights": False}).attn_scale == 1.0


def test_bfloat16_weights(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    tensors = _random_hf_tensors(np.random.default_rng(5))
    ref = load_gpt2(_write_folder(tmp_path / "f32", BASE_CONFIG, tensors))
    half = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    # safetensors.numpy cannot write bfloat16; write the file by hand (format: header + data).
    header, blobs, offset = {}, [], 0
    for k, v in half.items():
        raw = v.tobytes()
        header[k] = {
            "dtype": "BF16",
            "shape": list(v.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BASE_CONFIG))
    (folder / "model.safetensors").write_bytes(
        len(head).to_bytes(8, "little") + head + b"".join(blobs)
    )
    model = load_gpt2(folder)
    np.testing.assert_array_equal(
        np.asarray(model.w_e),
        tensors["transformer.wte.weight"].astype(ml_dtypes.bfloat16).astype(np.float32),
    )
    np.testing.assert_allclose(np.asarray(model.w_e), np.asarray(ref.w_e), rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# Errors


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_gpt2(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_gpt2(folder)


def test_truncated_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as info:
        load_gpt2(folder)
    assert "Re-download" in str(info.value)


def test_truncated_header(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(ValueError, match="truncated"):
        load_gpt2(folder)


def test_missing_tensors_are_listed(tmp_path):
    tensors = _random_hf_tensors(np.random.default_rng(0))
    del tensors["transformer.h.1.mlp.c_fc.bias"], tensors["transformer.ln_f.weight"]
    folder = _write_folder(tmp_path / "m", BASE_CONFIG, tensors)
    with pytest.raises(ValueError, match="missing tensors \\(2\\)") as info:
        load_gpt2(folder)
    assert "h.1.mlp.c_fc.bias" in str(info.value) and "ln_f.weight" in str(info.value)


def test_shape_mismatch_and_extra_layer(tmp_path):
    tensors = _random_hf_tensors(np.random.default_rng(0))
    tensors["transformer.wpe.weight"] = np.zeros((N_POS + 1, N_EMBD), np.float32)
    tensors["transformer.h.2.ln_1.weight"] = np.ones((N_EMBD,), np.float32)
    folder = _write_folder(tmp_path / "s", BASE_CONFIG, tensors)
    with pytest.raises(ValueError) as info:
        load_gpt2(folder)
    msg = str(info.value)
    assert f"wpe.weight: shape ({N_POS + 1}, {N_EMBD}), expected ({N_POS}, {N_EMBD})" in msg
    assert "unexpected tensors (1): h.2.ln_1.weight" in msg


def test_unsupported_config_reported_together(tmp_path):
    config = {
        **BASE_CONFIG,
        "scale_attn_by_inverse_layer_idx": True,
        "reorder_and_upcast_attn": True,
        "add_cross_attention": True,
        "activation_function": "silu",
        "rotary_dim": 4,
    }
    folder = _write_folder(tmp_path / "c", config, _random_hf_tensors(np.random.default_rng(0)))
    with pytest.raises(ValueError) as info:
        load_gpt2(folder)
    msg = str(info.value)
    for part in (
        "scale_attn_by_inverse_layer_idx=true",
        "reorder_and_upcast_attn=true",
        "add_cross_attention=true",
        "activation_function='silu'",
        "unknown key 'rotary_dim'",
        "ignore_config_keys",
    ):
        assert part in msg


def test_ignore_config_keys(tmp_path):
    config = {**BASE_CONFIG, "my_note": "hello"}
    folder = _write_folder(tmp_path / "i", config, _random_hf_tensors(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="unknown key 'my_note'"):
        load_gpt2(folder)
    assert load_gpt2(folder, ignore_config_keys={"my_note"}).cfg.n_layers == N_LAYER


@pytest.mark.parametrize(
    "identity",
    [
        {"model_type": "bert", "architectures": ["BertForMaskedLM"]},
        {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]},
        {"architectures": ["LlamaForCausalLM"]},
    ],
)
def test_wrong_architecture(tmp_path, identity):
    config = {k: v for k, v in BASE_CONFIG.items() if k not in ("model_type", "architectures")}
    folder = _write_folder(
        tmp_path / "w", {**config, **identity}, _random_hf_tensors(np.random.default_rng(0))
    )
    with pytest.raises(ValueError, match="not GPT-2"):
        load_gpt2(folder)


def test_file_instead_of_folder(folder):
    with pytest.raises(ValueError, match="is a file"):
        load_gpt2(folder / "config.json")


def test_missing_path_is_not_downloaded(tmp_path, monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise AssertionError("must not try to download a local path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(FileNotFoundError, match="No folder"):
        load_gpt2(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="No folder"):
        load_gpt2("./nope/gpt2/weights")


def test_hub_download_offline(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        OSError, match="'openai-community/gpt2' is not a local folder, and could not be downloaded"
    ) as info:
        load_gpt2("openai-community/gpt2")
    msg = str(info.value)
    assert "hf download openai-community/gpt2 config.json model.safetensors" in msg
    assert "load_gpt2(DIR)" in msg


def test_hub_download_uses_snapshot(folder, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(repo_id, allow_patterns=None, **kwargs):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model = load_gpt2("someone/tiny-gpt2")
    assert calls == [("someone/tiny-gpt2", ("config.json", "model.safetensors"))]
    assert model.cfg.d_model == N_EMBD
