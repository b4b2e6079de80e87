"""Mask semantics of the forward pass, against an independent plain transformer written here."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from absl.testing import parameterized

import jacdc
from jacdc.models import (
    Sources,
    Transformer,
    TransformerConfig,
    clean_run,
    corrupted_sources,
    empty_sources,
    zero_ablation_sources,
)


CONFIGS = {
    "gpt2": TransformerConfig(
        n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6
    ),
    "attn-only": TransformerConfig(
        n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=None, d_vocab=11, n_ctx=6,
        positional="shortformer",
    ),
    "tracr": TransformerConfig(
        n_layers=2, n_heads=1, d_model=8, d_head=4, d_mlp=6, d_vocab=7, n_ctx=6, d_vocab_out=3,
        act_fn="relu", normalization="none", positional="separate", causal=False,
    ),
}  # fmt: skip
ATOL = 1e-5


def _ln(ln, x):
    if ln is None:
        return x
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * np.asarray(ln.w) + np.asarray(ln.b)


def _act(cfg, x):
    if cfg.act_fn == "relu":
        return np.maximum(x, 0)
    c = np.sqrt(2 / np.pi)
    return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x**3)))


def plain_forward(model, tokens, positions=None, patch=None):
    """A plain NumPy transformer (float64): every receiver reads the whole residual stream,
    unless `patch(kind, layer, head, value, online)` changes its input (or q/k/v vector).
    Returns logits and {source index: output}, {("q", layer): (head, seq, d_head), ...}."""
    cfg, shape = model.cfg, model.graph_shape
    f = lambda a: np.asarray(a, np.float64)
    tokens = np.asarray(tokens)
    seq = len(tokens)
    positions = np.arange(seq) if positions is None else np.asarray(positions)
    patch = patch or (lambda kind, layer, head, value, online: value)
    tok, pos = f(model.w_e)[tokens], f(model.w_pos)[positions]
    online = {}
    if cfg.positional == "standard":
        online[0] = tok + pos
    elif cfg.positional == "shortformer":
        online[0] = tok
    else:
        online[0], online[1] = tok, pos
    vectors = {}
    bias = np.zeros(cfg.d_model)
    for layer, blk in enumerate(model.blocks):
        resid = sum(online.values()) + bias
        q, k, v = [], [], []
        for h in range(cfg.n_heads):
            per = {}
            for name, w, b in (("q", blk.w_q, blk.b_q), ("k", blk.w_k, blk.b_k),
                               ("v", blk.w_v, blk.b_v)):  # fmt: skip
                x = _ln(blk.ln1, patch(name, layer, h, resid.copy(), online))
                if cfg.positional == "shortformer" and name in "qk":
                    x = x + f(model.w_pos)[positions]
                per[name] = patch(name + "_vec", layer, h, x @ f(w)[h] + f(b)[h], online)
            q.append(per["q"]), k.append(per["k"]), v.append(per["v"])
        q, k, v = np.stack(q), np.stack(k), np.stack(v)
        vectors["q", layer], vectors["k", layer], vectors["v", layer] = q, k, v
        scores = np.einsum("hse,hte->hst", q, k) / cfg.scale
        if cfg.causal:
            scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -1e30)
        scores = scores - scores.max(-1, keepdims=True)
        pattern = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
        z = np.einsum("hst,hte->hse", pattern, v)
        for h in range(cfg.n_heads):
            online[shape.head_src(layer, h)] = z[h] @ f(blk.w_o)[h]
        bias = bias + f(blk.b_o)
        if cfg.has_mlp:
            x = patch("mlp", layer, -1, sum(online.values()) + bias, online)
            hidden = _act(cfg, _ln(blk.ln2, x) @ f(blk.w_in) + f(blk.b_in))
            online[shape.mlp_src(layer)] = hidden @ f(blk.w_out) + f(blk.b_out)
    x = patch("out", -1, -1, sum(online.values()) + bias, online)
    logits = _ln(model.ln_final, x) @ f(model.w_u) + f(model.b_u)
    return logits, online, vectors


def setup(name, key=0):
    cfg = CONFIGS[name]
    model = Transformer(cfg, key=jr.key(key))
    rng = np.random.default_rng(key)
    clean = jnp.asarray(rng.integers(0, cfg.d_vocab, (3, 5)), jnp.int32)
    corrupt = jnp.asarray(rng.integers(0, cfg.d_vocab, (3, 5)), jnp.int32)
    return model, clean, corrupt


def batched(model, tokens, mask, corrupted):
    return jax.vmap(model, in_axes=(0, None, 0))(tokens, mask, corrupted)


class TestAllOnesIsThePlainModel(chex.TestCase):
    """The forward pass jitted and run op by op (chex variants), against the plain model."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(CONFIGS))
    def test_all_ones_is_the_plain_model(self, name):
        model, clean, corrupt = setup(name)
        forward = self.variant(lambda *args: batched(model, *args))
        corrupted = corrupted_sources(model, corrupt)
        logits, sources = forward(clean, jacdc.EdgeMask.full(model.graph_shape), corrupted)
        for b in range(clean.shape[0]):
            expect, online, vectors = plain_forward(model, clean[b])
            np.testing.assert_allclose(logits[b], expect, atol=ATOL, rtol=0)
            for s, out in online.items():
                np.testing.assert_allclose(sources.resid[b, s], out, atol=ATOL, rtol=0)
            np.testing.assert_allclose(sources.q[b, 1], vectors["q", 1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_all_zeros_is_the_corrupted_run(name):
    model, clean, corrupt = setup(name)
    corrupted = corrupted_sources(model, corrupt)
    logits, _ = batched(model, clean, jacdc.EdgeMask.full(model.graph_shape, 0.0), corrupted)
    for b in range(clean.shape[0]):
        np.testing.assert_allclose(logits[b], plain_forward(model, corrupt[b])[0], atol=ATOL)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zero_ablation_keeps_only_biases(name):
    model, clean, _ = setup(name)
    zero = zero_ablation_sources(model, *clean.shape)
    assert float(jnp.abs(zero.resid).max()) == 0.0
    logits, _ = batched(model, clean, jacdc.EdgeMask.full(model.graph_shape, 0.0), zero)

    def only_biases(kind, layer, head, value, online):
        if kind in ("q", "k", "v", "mlp", "out"):
            return value - sum(online.values())  # every residual writer zeroed
        return value

    expect = plain_forward(model, clean[0], patch=only_biases)[0]
    np.testing.assert_allclose(logits[0], expect, atol=ATOL, rtol=0)


def _one_edge_cases(shape):
    """One edge of each kind: (edge, patch kind, layer, head, source or channel)."""
    L = shape.n_layers - 1
    cases = [
        (jacdc.Edge("q", (L, 0, 0)), "q", L, 0, 0),
        (jacdc.Edge("k", (L, shape.n_heads - 1, shape.head_src(0, 0))), "k", L,
         shape.n_heads - 1, shape.head_src(0, 0)),
        # the last source before layer L (not a positional embedding, which clean and corrupted
        # runs share, so that its patch does nothing)
        (jacdc.Edge("v", (L, 0, shape.n_src_before_layer(L) - 1)), "v", L, 0,
         shape.n_src_before_layer(L) - 1),
        (jacdc.Edge("out", (shape.head_src(L, 0),)), "out", -1, -1, shape.head_src(L, 0)),
        (jacdc.Edge("direct", (L, 0, 0)), "q_vec", L, 0, None),
        (jacdc.Edge("direct", (0, 0, 2)), "v_vec", 0, 0, None),
    ]  # fmt: skip
    if shape.has_mlp:
        cases.append((jacdc.Edge("mlp", (L, shape.head_src(L, 0))), "mlp", L, -1,
                      shape.head_src(L, 0)))  # fmt: skip
        cases.append((jacdc.Edge("out", (shape.mlp_src(0),)), "out", -1, -1, shape.mlp_src(0)))
    return cases


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_one_removed_edge_is_a_hand_computed_patch(name):
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    full = jacdc.EdgeMask.full(shape)
    for edge, kind, layer, head, src in _one_edge_cases(shape):
        logits, _ = batched(model, clean, jacdc.set_edge(full, edge, 0.0), corrupted)
        for b in range(clean.shape[0]):
            corrupt_online = plain_forward(model, corrupt[b])[1]
            corrupt_vectors = plain_forward(model, corrupt[b])[2]

            def patch(k, l, h, value, online, b=b):
                if (k, l, h) != (kind, layer, head):
                    return value
                if src is None:  # a direct edge: the head's corrupted q/k/v vector
                    return corrupt_vectors[kind[0], layer][head]
                return value - online[src] + corrupt_online[src]

            expect = plain_forward(model, clean[b], patch=patch)[0]
            np.testing.assert_allclose(logits[b], expect, atol=ATOL, rtol=0, err_msg=str(edge))
        unpatched = plain_forward(model, clean[0])[0]
        assert np.abs(np.asarray(logits[0]) - unpatched).max() > 1e-6, edge  # it did something


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_invalid_entries_change_nothing_and_get_zero_gradient(name):
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    valid = jacdc.graph_of(shape).validity()
    rng = np.random.default_rng(1)
    base = {f: np.where(v, rng.uniform(0, 1, v.shape), 0.0).astype(np.float32)
            for f, v in valid.items()}  # fmt: skip
    noisy = {f: np.where(valid[f], base[f], rng.normal(0, 5, base[f].shape)).astype(np.float32)
             for f in base}  # fmt: skip
    a, _ = batched(model, clean, jacdc.EdgeMask(**base), corrupted)
    b, _ = batched(model, clean, jacdc.EdgeMask(**noisy), corrupted)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def loss(mask):
        return batched(model, clean, mask, corrupted)[0].sum()

    grads = jax.grad(loss)(jacdc.EdgeMask(**noisy))
    for field, v in valid.items():
        g = np.asarray(getattr(grads, field))
        assert (g[~v] == 0).all(), field
        if v.any():
            assert np.abs(g[v]).max() > 0, field  # valid entries do matter


def test_positions_permute_the_positional_embedding():
    model, clean, _ = setup("tracr")
    perm = jnp.array([3, 0, 4, 1, 2])
    _, src = clean_run(model, clean[:1], perm[None])
    np.testing.assert_allclose(src.resid[0, 1], model.w_pos[perm], atol=0)


def test_no_retrace_when_mask_values_or_corrupted_sources_change():
    model, clean, corrupt = setup("gpt2")
    traces = []

    @eqx.filter_jit
    def forward(model, tokens, mask, corrupted):
        traces.append(1)
        return batched(model, tokens, mask, corrupted)[0]

    shape = model.graph_shape
    c1, c2 = corrupted_sources(model, corrupt), zero_ablation_sources(model, *clean.shape)
    forward(model, clean, jacdc.EdgeMask.full(shape), c1)
    forward(model, clean, jacdc.EdgeMask.full(shape, 0.3), c2)
    forward(model, corrupt, jacdc.graph_of(shape).mask_from_edges([0, 5, 9]), c1)
    assert len(traces) == 1


@pytest.mark.unchecked  # the errors users get
def test_bad_input_errors():
    model, clean, corrupt = setup("gpt2")
    shape = model.graph_shape
    full = jacdc.EdgeMask.full(shape)
    one = jax.tree.map(lambda x: x[0], corrupted_sources(model, corrupt))
    with pytest.raises(ValueError, match="unbatched sequence of shape"):
        model(clean, full, one)
    with pytest.raises(ValueError, match=r"must lie in \[0, 11\)"):
        model(clean[0].at[2].set(11), full, one)
    with pytest.raises(ValueError, match="integer ids"):
        model(clean[0].astype(jnp.float32), full, one)
    with pytest.raises(ValueError, match="outside"):
        model(jnp.zeros(7, jnp.int32), full, empty_sources(model.cfg, 7))
    wrong = eqx.tree_at(lambda m: m.q, full, full.q[:, :1])
    with pytest.raises(ValueError, match="field `q` has shape"):
        model(clean[0], wrong, one)
    with pytest.raises(ValueError, match=r"`corrupted.resid` has shape"):
        model(clean[0], full, Sources(one.resid[:2], one.q, one.k, one.v))
    with pytest.raises(ValueError, match="Invalid TransformerConfig: n_heads"):
        TransformerConfig(n_layers=2, n_heads=0, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                          n_ctx=6)  # fmt: skip
    with pytest.raises(ValueError, match="act_fn"):
        TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                          n_ctx=6, act_fn="swish")  # fmt: skip
