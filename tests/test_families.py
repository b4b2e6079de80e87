"""Mask semantics of every model family (GPT-NeoX, Llama, Qwen2, Mistral, Gemma-2), against an
independent float64 NumPy transformer written here, receiver by receiver."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc.models import (
    Block,
    Transformer,
    TransformerConfig,
    corrupted_sources,
    zero_ablation_sources,
)


_BASE = dict(n_layers=2, n_heads=4, d_model=16, d_head=8, d_mlp=24, d_vocab=13, n_ctx=16)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
FAMILIES = {
    # parallel blocks, partial rotary (0.25 of d_head), LayerNorm with biases, exact GELU
    "neox": TransformerConfig(
        **_BASE, act_fn="gelu", positional="rotary", rotary_dim=2, parallel_attn_mlp=True
    ),
    # RMSNorm, rotary with llama3 scaling, GQA, SwiGLU, untied, no biases
    "llama": TransformerConfig(
        **_BASE, act_fn="silu", normalization="RMS", positional="rotary", n_kv_heads=2,
        gated_mlp=True, rope_theta=10000.0, rope_scaling=LLAMA3, ln_eps=1e-6,
    ),
    # q/k/v biases only, tied embeddings
    "qwen2": TransformerConfig(
        **_BASE, act_fn="silu", normalization="RMS", positional="rotary", n_kv_heads=2,
        gated_mlp=True, rope_theta=1e6,
    ),
    # sliding window on every layer, GQA, linear rope scaling
    "mistral": TransformerConfig(
        **_BASE, act_fn="silu", normalization="RMS", positional="rotary", n_kv_heads=2,
        gated_mlp=True, sliding_window=3, rope_scaling={"type": "linear", "factor": 2.0},
    ),
    # GeGLU, post-norms, soft-capping, embedding scale, alternating windows, MQA,
    # query_pre_attn_scalar = 6
    "gemma2": TransformerConfig(
        **_BASE, act_fn="gelu_pytorch_tanh", normalization="RMS", positional="rotary",
        n_kv_heads=1, gated_mlp=True, post_norms=True, embed_scale=4.0, attn_softcap=0.5,
        final_softcap=0.3, sliding_window=(3, None), attn_scale=math.sqrt(6.0),
    ),
}  # fmt: skip
# Which biases each family keeps (the others are left out of `from_params`: zeros) and whether
# the unembedding is tied.
_BIASES = {
    "neox": ("b_q", "b_k", "b_v", "b_o", "b_in", "b_out"),
    "llama": (),
    "qwen2": ("b_q", "b_k", "b_v"),
    "mistral": (),
    "gemma2": (),
}
_TIED = {"neox": False, "llama": False, "qwen2": True, "mistral": False, "gemma2": True}
ATOL = 2e-5
SEQ = 7  # longer than the sliding windows (3)


def family_model(name: str, key: int = 0) -> Transformer:
    """A tiny random model of the family, rebuilt through `from_params` with the family's
    biases only and its tying."""
    cfg = FAMILIES[name]
    rand = Transformer(cfg, key=jr.key(key))
    norm = lambda n: None if n is None else (n.w, getattr(n, "b", None))
    weight_keys = ("w_q", "w_k", "w_v", "w_o", "w_in", "w_out", "w_gate")
    norm_keys = ("ln1", "ln2", "ln_post_attn", "ln_post_mlp")
    blocks = []
    for blk in rand.blocks:
        d = {k: getattr(blk, k) for k in weight_keys if getattr(blk, k) is not None}
        d.update({k: norm(getattr(blk, k)) for k in norm_keys if getattr(blk, k) is not None})
        d.update({k: getattr(blk, k) for k in _BIASES[name] if getattr(blk, k) is not None})
        blocks.append(d)
    tied = _TIED[name]
    return Transformer.from_params(
        cfg,
        w_e=rand.w_e,
        blocks=blocks,
        ln_final=norm(rand.ln_final),
        w_u=rand.w_e.T if tied else rand.w_u,
        b_u=None,
    )


def setup(name, key=0, batch=2):
    model = family_model(name, key)
    rng = np.random.default_rng(key)
    clean = jnp.asarray(rng.integers(0, model.cfg.d_vocab, (batch, SEQ)), jnp.int32)
    corrupt = jnp.asarray(rng.integers(0, model.cfg.d_vocab, (batch, SEQ)), jnp.int32)
    return model, clean, corrupt


# ---------------------------------------------------------------------------------------------
# The reference: float64 NumPy, per head and per receiver, written from the definitions.
# ---------------------------------------------------------------------------------------------
_erf = np.vectorize(math.erf)


def _f(x):
    return None if x is None else np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def _norm(cfg, n, x):
    if n is None:
        return x
    if cfg.normalization == "RMS":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + n.eps) * _f(n.w)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + n.eps) * _f(n.w) + _f(n.b)


def _act(name, x):
    if name == "gelu":
        return 0.5 * x * (1 + _erf(x / np.sqrt(2)))
    if name == "silu":
        return x / (1 + np.exp(-x))
    if name == "relu":
        return np.maximum(x, 0)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _inv_freq(cfg):
    """Hugging Face's rope frequencies, written out again for the test."""
    r = cfg.rotary_dim or cfg.d_head
    inv = np.array([cfg.rope_theta ** (-2 * j / r) for j in range(r // 2)])
    sc = dict(cfg.rope_scaling or ())
    if sc.get("rope_type") == "linear":
        return inv / sc["factor"]
    if sc.get("rope_type") == "llama3":
        out = []
        old = sc["original_max_position_embeddings"]
        for f in inv:
            wl = 2 * np.pi / f
            if wl < old / sc["high_freq_factor"]:
                out.append(f)
            elif wl > old / sc["low_freq_factor"]:
                out.append(f / sc["factor"])
            else:
                s = (old / wl - sc["low_freq_factor"]) / (
                    sc["high_freq_factor"] - sc["low_freq_factor"]
                )
                out.append((1 - s) * f / sc["factor"] + s * f)
        return np.array(out)
    return inv


def _rope(cfg, x, positions):
    """Rotate pairs (i, i + r/2) of the first r dims of x (seq, d_head) by pos * inv_freq[i]."""
    if cfg.positional != "rotary":
        return x
    r = cfg.rotary_dim or cfg.d_head
    out = x.copy()
    for i, f in enumerate(_inv_freq(cfg)):
        a = positions * f
        x1, x2 = x[:, i], x[:, i + r // 2]
        out[:, i] = x1 * np.cos(a) - x2 * np.sin(a)
        out[:, i + r // 2] = x2 * np.cos(a) + x1 * np.sin(a)
    return out


def _attend(cfg, layer, q, k, v):
    """q, k, v: (head, seq, d_head) -> z (head, seq, d_head)."""
    seq = q.shape[1]
    window = cfg.windows()[layer]
    z = np.zeros_like(q)
    for h in range(q.shape[0]):
        s = q[h] @ k[h].T / cfg.scale
        if cfg.attn_softcap:
            s = cfg.attn_softcap * np.tanh(s / cfg.attn_softcap)
        for i in range(seq):
            for j in range(seq):
                if j > i or (window is not None and i - j >= window):
                    s[i, j] = -np.inf
        p = np.exp(s - s.max(-1, keepdims=True))
        z[h] = (p / p.sum(-1, keepdims=True)) @ v[h]
    return z


def _mlp(cfg, blk, x):
    x = _norm(cfg, blk.ln2, x)
    pre = x @ _f(blk.w_in) + _f(blk.b_in)
    if cfg.gated_mlp:
        hidden = _act(cfg.act_fn, x @ _f(blk.w_gate) + _f(blk.b_gate)) * pre
    else:
        hidden = _act(cfg.act_fn, pre)
    out = hidden @ _f(blk.w_out) + _f(blk.b_out)
    return _norm(cfg, blk.ln_post_mlp, out)


def _qkv(cfg, blk, h, xs, positions):
    """Head h's q, k, v from its three (normalised) inputs; k, v with its kv group's weights."""
    g = h // (cfg.n_heads // cfg.kv_heads)
    q = xs[0] @ _f(blk.w_q)[h] + _f(blk.b_q)[h]
    k = xs[1] @ _f(blk.w_k)[g] + _f(blk.b_k)[g]
    v = xs[2] @ _f(blk.w_v)[g] + _f(blk.b_v)[g]
    return _rope(cfg, q, positions), _rope(cfg, k, positions), v


def _unembed(model, x):
    cfg = model.cfg
    logits = _norm(cfg, model.ln_final, x) @ _f(model.w_u) + _f(model.b_u)
    if cfg.final_softcap:
        logits = cfg.final_softcap * np.tanh(logits / cfg.final_softcap)
    return logits


def _embed(model, tokens):
    x = _f(model.w_e)[np.asarray(tokens)]
    return x * (model.cfg.embed_scale or 1.0)


def plain_forward(model, tokens):
    """The unmasked model, as Hugging Face writes it: one residual stream. Returns logits,
    {("embed",): ..., ("head", l, h): result before any post-norm, ("mlp", l): output} and
    {("q"|"k"|"v", l): (head, seq, d_head)}."""
    cfg = model.cfg
    seq = len(tokens)
    pos = np.arange(seq, dtype=np.float64)
    resid = _embed(model, tokens)
    src, vec = {("embed",): resid.copy()}, {}
    for layer, blk in enumerate(model.blocks):
        x = _norm(cfg, blk.ln1, resid)
        qkv = [_qkv(cfg, blk, h, (x, x, x), pos) for h in range(cfg.n_heads)]
        q, k, v = (np.stack([t[i] for t in qkv]) for i in range(3))
        vec["q", layer], vec["k", layer], vec["v", layer] = q, k, v
        z = _attend(cfg, layer, q, k, v)
        attn = _f(blk.b_o).copy()
        for h in range(cfg.n_heads):
            src["head", layer, h] = z[h] @ _f(blk.w_o)[h]
            attn = attn + src["head", layer, h]
        if cfg.post_norms:
            attn = _norm(cfg, blk.ln_post_attn, attn)
        if cfg.parallel_attn_mlp:
            src["mlp", layer] = _mlp(cfg, blk, resid)
            resid = resid + attn + src["mlp", layer]
        else:
            resid = resid + attn
            src["mlp", layer] = _mlp(cfg, blk, resid)
            resid = resid + src["mlp", layer]
    return _unembed(model, resid), src, vec


def _index(shape, key):
    if key[0] == "embed":
        return 0
    if key[0] == "head":
        return shape.head_src(key[1], key[2])
    return shape.mlp_src(key[1])


def masked_forward(model, tokens, mask, c_src, c_vec):
    """The definition, receiver by receiver: each receiver reads, from every source upstream of
    it, `m * online + (1 - m) * corrupted`; per earlier layer the mixed heads are summed with
    that layer's `b_o` (and normalised by its post-attention norm, if any). `mask`: NumPy
    fields; `c_src`, `c_vec`: corrupted sources as `plain_forward` returns them."""
    cfg, shape = model.cfg, model.graph_shape
    seq = len(tokens)
    pos = np.arange(seq, dtype=np.float64)
    on = {("embed",): _embed(model, tokens)}

    def receive(row, layers_heads, layers_mlp):
        """Input from the embedding, the heads of `layers_heads` and the MLPs of `layers_mlp`;
        `row(source index)` is the receiver's mask entry."""
        mix = lambda key: (
            row(_index(shape, key)) * on[key] + (1 - row(_index(shape, key))) * c_src[key]
        )
        x = mix(("embed",))
        for lay in layers_heads:
            blk = model.blocks[lay]
            part = _f(blk.b_o) + sum(mix(("head", lay, h)) for h in range(cfg.n_heads))
            x = x + (_norm(cfg, blk.ln_post_attn, part) if cfg.post_norms else part)
        for lay in layers_mlp:
            x = x + mix(("mlp", lay))
        return x

    vec = {}
    for layer, blk in enumerate(model.blocks):
        before = range(layer)
        qkv = []
        for h in range(cfg.n_heads):
            xs = [
                _norm(cfg, blk.ln1, receive(lambda s, f=f: mask[f][layer, h, s], before, before))
                for f in "qkv"
            ]
            q, k, v = _qkv(cfg, blk, h, xs, pos)
            d = mask["direct"][layer, h]
            q, k, v = (
                x if d[i] == 1 else d[i] * x + (1 - d[i]) * c_vec[f, layer][h]
                for i, (f, x) in enumerate(zip("qkv", (q, k, v)))
            )
            qkv.append((q, k, v))
        q, k, v = (np.stack([t[i] for t in qkv]) for i in range(3))
        vec["q", layer], vec["k", layer], vec["v", layer] = q, k, v
        z = _attend(cfg, layer, q, k, v)
        for h in range(cfg.n_heads):
            on["head", layer, h] = z[h] @ _f(blk.w_o)[h]
        heads_up = before if cfg.parallel_attn_mlp else range(layer + 1)
        x = receive(lambda s: mask["mlp"][layer, s], heads_up, before)
        on["mlp", layer] = _mlp(cfg, blk, x)
    every = range(cfg.n_layers)
    x = receive(lambda s: mask["out"][s], every, every)
    return _unembed(model, x), on, vec


def _from_jacdc(model, sources, b):
    """jacdc's batched Sources, element b, in the reference's dict form."""
    cfg, shape = model.cfg, model.graph_shape
    resid = np.asarray(sources.resid[b], np.float64)
    src = {("embed",): resid[0]}
    for layer in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            src["head", layer, h] = resid[shape.head_src(layer, h)]
        src["mlp", layer] = resid[shape.mlp_src(layer)]
    vec = {}
    for f in "qkv":
        for layer in range(cfg.n_layers):
            vec[f, layer] = np.asarray(getattr(sources, f)[b, layer], np.float64)
    return src, vec


def _np_mask(mask):
    return {f: np.asarray(getattr(mask, f), np.float64) for f in jacdc._graph.FIELDS}


def batched(model, tokens, mask, corrupted, layers="unrolled"):
    return _batched(model, tokens, mask, corrupted, layers)


@eqx.filter_jit
def _batched(model, tokens, mask, corrupted, layers):
    # compiled once per family, path and shapes, then reused by every test
    return jax.vmap(lambda t, c: model(t, mask, c, layers=layers))(tokens, corrupted)


@eqx.filter_jit
def _mask_grad(model, tokens, mask, corrupted, layers):
    return jax.grad(lambda m: (_batched(model, tokens, m, corrupted, layers)[0] ** 2).sum())(mask)


NAMES = sorted(FAMILIES)
LAYERS = ["unrolled", "scan"]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_reference_masked_forward_at_all_ones_is_the_plain_reference(name):
    """The two reference forwards agree with each other (so neither is vacuous)."""
    model, clean, corrupt = setup(name)
    ones = _np_mask(jacdc.EdgeMask.full(model.graph_shape))
    logits, src, vec = plain_forward(model, np.asarray(clean[0]))
    c_logits, c_src, c_vec = plain_forward(model, np.asarray(corrupt[0]))
    got = masked_forward(model, np.asarray(clean[0]), ones, c_src, c_vec)
    np.testing.assert_allclose(got[0], logits, atol=1e-10)
    zeros = _np_mask(jacdc.EdgeMask.full(model.graph_shape, 0.0))
    got = masked_forward(model, np.asarray(clean[0]), zeros, c_src, c_vec)
    np.testing.assert_allclose(got[0], c_logits, atol=1e-10)


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("name", NAMES)
def test_all_ones_is_the_plain_model(name, layers):
    model, clean, corrupt = setup(name)
    corrupted = corrupted_sources(model, corrupt)
    logits, sources = batched(
        model, clean, jacdc.EdgeMask.full(model.graph_shape), corrupted, layers
    )
    for b in range(clean.shape[0]):
        expect, src, vec = plain_forward(model, np.asarray(clean[b]))
        np.testing.assert_allclose(logits[b], expect, atol=ATOL, rtol=0)
        got_src, got_vec = _from_jacdc(model, sources, b)
        for key, value in src.items():
            np.testing.assert_allclose(got_src[key], value, atol=ATOL, rtol=0, err_msg=str(key))
        for key, value in vec.items():
            np.testing.assert_allclose(got_vec[key], value, atol=ATOL, rtol=0, err_msg=str(key))


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("name", NAMES)
def test_all_zeros_is_the_corrupted_run(name, layers):
    model, clean, corrupt = setup(name)
    corrupted = corrupted_sources(model, corrupt)
    zeros = jacdc.EdgeMask.full(model.graph_shape, 0.0)
    logits, _ = batched(model, clean, zeros, corrupted, layers)
    for b in range(clean.shape[0]):
        expect = plain_forward(model, np.asarray(corrupt[b]))[0]
        np.testing.assert_allclose(logits[b], expect, atol=ATOL, rtol=0)


def _zero_reference(model, seq):
    """Zero ablation by the definition: every residual writer zero, and the corrupted q/k/v the
    heads compute when every receiver sees only the biases."""
    shape = model.graph_shape
    src = {("embed",): np.zeros((seq, model.cfg.d_model))}
    for layer in range(shape.n_layers):
        for h in range(shape.n_heads):
            src["head", layer, h] = np.zeros((seq, model.cfg.d_model))
        src["mlp", layer] = np.zeros((seq, model.cfg.d_model))
    only_biases = _np_mask(jacdc.EdgeMask.full(shape, 0.0))
    only_biases["direct"][:] = 1.0
    cfg = model.cfg
    unused = {(f, lay): np.full((cfg.n_heads, seq, cfg.d_head), np.nan) for f in "qkv"
              for lay in range(cfg.n_layers)}  # fmt: skip
    _, _, vec = masked_forward(model, np.zeros(seq, int), only_biases, src, unused)
    return src, vec


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_as_defined(name, layers):
    model, clean, _ = setup(name)
    zero = zero_ablation_sources(model, *clean.shape)
    z_src, z_vec = _zero_reference(model, SEQ)
    _, got_vec = _from_jacdc(model, zero, 0)
    for key, value in z_vec.items():
        np.testing.assert_allclose(got_vec[key], value, atol=ATOL, rtol=0, err_msg=str(key))
    zeros = jacdc.EdgeMask.full(model.graph_shape, 0.0)
    logits, _ = batched(model, clean, zeros, zero, layers)
    expect = masked_forward(model, np.asarray(clean[0]), _np_mask(zeros), z_src, z_vec)[0]
    np.testing.assert_allclose(logits[0], expect, atol=ATOL, rtol=0)
    # and a mixed mask against zero-ablated sources
    mask = _random_mask(model.graph_shape, 4)
    logits, _ = batched(model, clean, mask, zero, layers)
    expect = masked_forward(model, np.asarray(clean[1]), _np_mask(mask), z_src, z_vec)[0]
    np.testing.assert_allclose(logits[1], expect, atol=ATOL, rtol=0)


def _one_edge_cases(shape):
    """One edge of each kind (q, k, v, MLP, output, direct q/k/v), reading heads, MLPs and the
    embedding."""
    L = shape.n_layers - 1
    mlp_reads = shape.head_src(L - 1, 1) if shape.parallel else shape.head_src(L, 1)
    return [
        jacdc.Edge("q", (L, 0, shape.head_src(0, 2))),
        jacdc.Edge("k", (L, shape.n_heads - 1, 0)),
        jacdc.Edge("v", (L, 1, shape.mlp_src(0))),
        jacdc.Edge("mlp", (L, mlp_reads)),
        jacdc.Edge("mlp", (0, 0)),
        jacdc.Edge("out", (shape.head_src(L, 0),)),
        jacdc.Edge("out", (shape.mlp_src(0),)),
        jacdc.Edge("direct", (L, 0, 0)),
        jacdc.Edge("direct", (L, 1, 1)),
        jacdc.Edge("direct", (0, 2, 2)),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_one_removed_edge_is_the_reference_patch(name):
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    full = jacdc.EdgeMask.full(shape)
    masks = [jacdc.set_edge(full, edge, 0.0) for edge in _one_edge_cases(shape)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *masks)
    logits = jax.vmap(lambda m: batched(model, clean, m, corrupted)[0])(stacked)
    c_refs = [plain_forward(model, np.asarray(corrupt[b])) for b in range(clean.shape[0])]
    for i, edge in enumerate(_one_edge_cases(shape)):
        mask = _np_mask(masks[i])
        for b in range(clean.shape[0]):
            _, c_src, c_vec = c_refs[b]
            expect = masked_forward(model, np.asarray(clean[b]), mask, c_src, c_vec)[0]
            np.testing.assert_allclose(logits[i, b], expect, atol=ATOL, rtol=0, err_msg=str(edge))
        unpatched = plain_forward(model, np.asarray(clean[0]))[0]
        assert np.abs(np.asarray(logits[i, 0]) - unpatched).max() > 1e-6, edge  # it did something


def _random_mask(shape, seed, noisy_invalid=False):
    rng = np.random.default_rng(seed)
    valid = jacdc.graph_of(shape).validity()
    fields = {}
    for f, v in valid.items():
        noise = rng.normal(0, 5, v.shape) * noisy_invalid
        fields[f] = np.where(v, rng.uniform(0, 1, v.shape), noise).astype(np.float32)
    return jacdc.EdgeMask(**fields)


@pytest.mark.parametrize("name", NAMES)
def test_fractional_mask_matches_the_reference(name):
    model, clean, corrupt = setup(name)
    corrupted = corrupted_sources(model, corrupt)
    mask = _random_mask(model.graph_shape, 7)
    logits, sources = batched(model, clean, mask, corrupted)
    c_src, c_vec = _from_jacdc(model, corrupted, 0)
    expect, on, vec = masked_forward(model, np.asarray(clean[0]), _np_mask(mask), c_src, c_vec)
    np.testing.assert_allclose(logits[0], expect, atol=ATOL, rtol=0)
    got_src, got_vec = _from_jacdc(model, sources, 0)
    for key, value in on.items():
        np.testing.assert_allclose(got_src[key], value, atol=ATOL, rtol=0, err_msg=str(key))
    for key, value in vec.items():
        np.testing.assert_allclose(got_vec[key], value, atol=ATOL, rtol=0, err_msg=str(key))


@pytest.mark.parametrize("name", NAMES)
def test_invalid_entries_change_nothing_and_get_zero_gradient(name):
    """(The scan path's invalid entries: `tests/test_scan.py`, on every family too.)"""
    layers = "unrolled"
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    valid = jacdc.graph_of(shape).validity()
    quiet, noisy = _random_mask(shape, 1), _random_mask(shape, 1, noisy_invalid=True)
    a, _ = batched(model, clean, quiet, corrupted, layers)
    b, _ = batched(model, clean, noisy, corrupted, layers)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    grads = _mask_grad(model, clean, noisy, corrupted, layers)
    for field, v in valid.items():
        g = np.asarray(getattr(grads, field))
        assert (g[~v] == 0).all(), field
        assert np.abs(g[v]).max() > 0, field  # valid entries do matter


def test_parallel_mlp_does_not_read_its_own_layer():
    shape = FAMILIES["neox"].graph_shape
    valid = jacdc.graph_of(shape).validity()["mlp"]
    for layer in range(shape.n_layers):
        for s in range(shape.n_src):
            upstream = shape.src_layer(s) < layer
            assert valid[layer, s] == upstream, (layer, s)


def test_bf16_weights_run_in_float32():
    cfg = FAMILIES["llama"]
    model32 = family_model("llama")
    cfg16 = dataclasses.replace(cfg, weight_dtype="bfloat16")
    fields = lambda blk: {f: getattr(blk, f) for f in Block.__dataclass_fields__}
    model16 = Transformer.from_params(
        cfg16,
        w_e=model32.w_e,
        blocks=[
            {k: v for k, v in fields(blk).items() if v is not None and not k.startswith("ln")}
            | {k: (v.w, None) for k, v in fields(blk).items() if k.startswith("ln") and v}
            for blk in model32.blocks
        ],
        ln_final=(model32.ln_final.w, None),
        w_u=model32.w_u,
    )
    assert model16.blocks[0].w_q.dtype == jnp.bfloat16
    _, clean, corrupt = setup("llama")
    corrupted = corrupted_sources(model16, corrupt)
    for layers in ["scan"]:  # the default path; both paths share the layer code
        logits, src = batched(
            model16, clean, jacdc.EdgeMask.full(cfg.graph_shape), corrupted, layers
        )
        assert logits.dtype == jnp.float32 and src.resid.dtype == jnp.float32
        # the bf16 model is the float32 model with rounded weights, computed in float32
        expect = plain_forward(model16, np.asarray(clean[0]))[0]
        np.testing.assert_allclose(logits[0], expect, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
REAL = {
    # name: (layers, heads, parallel)
    "pythia-70m": (6, 8, True),
    "pythia-160m": (12, 12, True),
    "qwen2.5-0.5b": (24, 14, False),
    "gemma-2-2b": (26, 8, False),
    "llama-3.1-8b": (32, 32, False),
}
REAL_EDGES = {
    "pythia-70m": 3_724,
    "pythia-160m": 32_779,
    "qwen2.5-0.5b": 180_757,
    "gemma-2-2b": 74_842,
    "llama-3.1-8b": 1_595_953,
}


def _brute_force_edges(L, H, parallel):
    """Counts edges by walking receivers: each reads every source upstream of it."""
    n_src = lambda layers_heads, layers_mlp: 1 + H * layers_heads + layers_mlp
    total = 0
    for layer in range(L):
        total += 3 * H * (n_src(layer, layer) + 1)  # q/k/v inputs and their direct edges
        total += n_src(layer if parallel else layer + 1, layer)  # the MLP input
    return total + n_src(L, L)  # the output


@pytest.mark.parametrize("name", sorted(REAL))
def test_edge_counts_of_real_configurations(name):
    L, H, parallel = REAL[name]
    shape = jacdc.GraphShape(L, H, True, 1, parallel)
    assert shape.n_edges() == REAL_EDGES[name] == _brute_force_edges(L, H, parallel)
    if L * H <= 150:
        assert len(jacdc.graph_of(shape)) == REAL_EDGES[name]


def test_edge_count_of_a_family_config_comes_from_its_config():
    # Pythia-70m's hyperparameters as a config: the graph follows from the config alone.
    cfg = TransformerConfig(
        n_layers=6, n_heads=8, d_model=512, d_head=64, d_mlp=2048, d_vocab=50304, n_ctx=2048,
        act_fn="gelu", positional="rotary", rotary_dim=16, parallel_attn_mlp=True,
    )  # fmt: skip
    assert cfg.graph_shape.n_edges() == REAL_EDGES["pythia-70m"]
    gqa = TransformerConfig(
        n_layers=24, n_heads=14, n_kv_heads=2, d_model=896, d_head=64, d_mlp=4864,
        d_vocab=151936, n_ctx=32768, normalization="RMS", positional="rotary", gated_mlp=True,
        act_fn="silu",
    )  # fmt: skip
    assert gqa.graph_shape.n_edges() == REAL_EDGES["qwen2.5-0.5b"]  # k/v receivers per query head


# ---------------------------------------------------------------------------------------------
@pytest.mark.unchecked
def test_bad_configs_name_the_problem():
    base = dict(_BASE, positional="rotary")
    with pytest.raises(ValueError, match="rope_scaling type 'yarn' is not implemented; "
                       "supported: \\('default', 'linear', 'llama3'\\)"):  # fmt: skip
        TransformerConfig(**base, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="rope_scaling holds rope_theta=500000.0, but rope_theta"):
        TransformerConfig(**base, rope_scaling={"rope_type": "default", "rope_theta": 500000.0})
    with pytest.raises(ValueError, match="needs the keys \\['low_freq_factor'"):
        TransformerConfig(**base, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(
        ValueError, match="n_heads \\(4\\) must be a multiple of n_kv_heads \\(3\\)"
    ):
        TransformerConfig(**base, n_kv_heads=3)
    with pytest.raises(ValueError, match="sliding_window must have one entry per layer \\(2\\)"):
        TransformerConfig(**base, sliding_window=(3, None, 3))
    with pytest.raises(ValueError, match="rotary_dim must be an even int"):
        TransformerConfig(**base, rotary_dim=3)
    with pytest.raises(ValueError, match="rotary_dim=2 given, but positional='standard'"):
        TransformerConfig(**_BASE, rotary_dim=2)
    with pytest.raises(ValueError, match="normalization must be one of"):
        TransformerConfig(**base, normalization="gemma")
    with pytest.raises(ValueError, match="post_norms=True needs normalization"):
        TransformerConfig(**base, normalization="none", post_norms=True)
    with pytest.raises(ValueError, match="gated_mlp=True needs an MLP"):
        TransformerConfig(**{**base, "d_mlp": None}, gated_mlp=True)
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        TransformerConfig(**base, weight_dtype="int8")


@pytest.mark.unchecked
def test_bad_weights_are_listed_together():
    cfg = FAMILIES["llama"]
    model = family_model("llama")
    blk = {f: getattr(model.blocks[0], f) for f in Block.__dataclass_fields__}
    blk = {k: v for k, v in blk.items() if v is not None}
    blk["ln1"], blk["ln2"] = (blk["ln1"].w, None), (blk["ln2"].w, jnp.ones(16))
    blk["w_k"] = jnp.zeros((4, 16, 8))  # per query head: wrong for n_kv_heads=2
    del blk["w_gate"]
    with pytest.raises(ValueError) as info:
        Transformer.from_params(
            cfg, w_e=model.w_e, w_pos=jnp.zeros((16, 16)), blocks=[blk, blk],
            ln_final=(model.ln_final.w, None), w_u=model.w_u,
        )  # fmt: skip
    msg = str(info.value)
    assert "blocks.0.w_k: shape (4, 16, 8), expected (2, 16, 8)" in msg
    assert "blocks.0.w_gate: missing, expected shape (16, 24)" in msg
    assert "blocks.0.ln2.b: given, but RMSNorm has no bias" in msg
    assert "w_pos: given, but this config has no such weight" in msg
