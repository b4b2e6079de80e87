"""The scan-over-layers forward (the fast path) against the unrolled one (the reference path)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_close
from test_families import FAMILIES, setup as family_setup
from test_transformer import CONFIGS, batched, setup as config_setup

import jacdc
from jacdc.models import clean_run, corrupted_sources, zero_ablation_sources


ATOL = 2e-5
# The GPT-2 / attention-only / tracr configs and every family of `test_families`.
NAMES = sorted(CONFIGS) + sorted(FAMILIES)


def setup(name):
    return family_setup(name) if name in FAMILIES else config_setup(name)


def _random_mask(shape, seed, binary=False, noisy_invalid=True):
    """Valid entries uniform in [0, 1] (or 0/1), invalid entries noise (they must not matter)."""
    rng = np.random.default_rng(seed)
    valid = jacdc.graph_of(shape).validity()
    fields = {}
    for f, v in valid.items():
        x = rng.uniform(0, 1, v.shape)
        if binary:
            x = (x < 0.7).astype(np.float64)
        noise = rng.normal(0, 5, v.shape) * noisy_invalid
        fields[f] = np.where(v, x, noise).astype(np.float32)
    return jacdc.EdgeMask(**fields)


@eqx.filter_jit
def _forward(model, tokens, mask, corrupted, layers):
    return jax.vmap(lambda t, c: model(t, mask, c, layers=layers))(tokens, corrupted)


# Families: corrupted ablation only (zero ablation runs the same code with other corrupted
# values; the families' zero ablation is checked on both paths in test_families.py).
@pytest.mark.parametrize(
    "name, ablation",
    [(n, a) for n in NAMES for a in ("corrupted", "zero") if n in CONFIGS or a == "corrupted"],
)
def test_scan_equals_unrolled_logits_sources_and_gradients(name, ablation):
    model, clean, corrupt = setup(name)
    if ablation == "zero":
        corrupted = zero_ablation_sources(model, *clean.shape)
    else:
        corrupted = corrupted_sources(model, corrupt)
    mask = _random_mask(model.graph_shape, 3)
    a_logits, a_src = _forward(model, clean, mask, corrupted, "scan")
    b_logits, b_src = _forward(model, clean, mask, corrupted, "unrolled")
    assert_trees_close((a_logits, a_src), (b_logits, b_src), atol=ATOL, rtol=0)

    def loss(m, layers):
        return (_forward(model, clean, m, corrupted, layers)[0] ** 2).mean()

    ga = jax.grad(loss)(mask, "scan")
    gb = jax.grad(loss)(mask, "unrolled")
    assert_trees_close(ga, gb, atol=ATOL, rtol=1e-4)
    valid = jacdc.graph_of(model.graph_shape).validity()
    for field, v in valid.items():
        x, y = np.asarray(getattr(ga, field)), np.asarray(getattr(gb, field))
        assert (x[~v] == 0).all() and (y[~v] == 0).all(), field
        if v.any():
            assert np.abs(x[v]).max() > 0, field


@pytest.mark.parametrize("name", NAMES)
def test_run_from_scan_equals_run_from_at_every_stage(name):
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    buffer = clean_run(model, clean)[1].resid
    positions = jnp.array([1, 4])
    stages = range(2 * shape.n_layers + 1)
    if not shape.has_mlp:
        stages = [s for s in stages if s % 2 == 0]
    for stage in stages:
        mask = _random_mask(shape, 10 + stage, binary=True)
        n = model.n_prefix(stage)

        def ref(t, m, c, p):
            return model.run_from(stage, t, m, c, p, None, positions)

        def fast(t, m, c, p):
            return model.run_from_scan(jnp.int32(stage), t, m, c, p, None, positions)

        want = jax.vmap(ref, in_axes=(0, None, 0, 0))(clean, mask, corrupted, buffer[:, :n])
        got = jax.vmap(fast, in_axes=(0, None, 0, 0))(clean, mask, corrupted, buffer)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"stage {stage}")
        # run_from accepts the whole buffer too (it reads the first n sources only)
        longer = jax.vmap(ref, in_axes=(0, None, 0, 0))(clean, mask, corrupted, buffer)
        np.testing.assert_array_equal(longer, want)
        if model.cfg.post_norms:
            with pytest.raises(ValueError, match="post-attention norms"):
                model.suffix_prefix(stage, buffer, corrupted.resid, positions)
            continue
        # The static-stage suffix (every receiver mixing exactly its upstream sources).
        pre = model.suffix_prefix(stage, buffer, corrupted.resid, positions)
        got = jax.vmap(lambda t, c, p: model.run_suffix(stage, t, mask, c, p, None, positions))(
            clean, corrupted, pre
        )
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"suffix {stage}")
        # Banded: the scan from the stage's own layer on (the prefix read from the buffer);
        # with the prefix mixed from the clean buffer at two stages, in one contraction at all.
        first = stage // 2
        if stage in (1, 2 * shape.n_layers - 2):

            def banded(t, m, c, p):
                return model.run_from_scan(
                    jnp.int32(stage), t, m, c, p, None, positions, None, first
                )

            got = jax.vmap(banded, in_axes=(0, None, 0, 0))(clean, mask, corrupted, buffer)
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"banded {stage}")
        # ... with the prefix mixed in one contraction (`clean - corrupted`, corrupted sum)
        delta = buffer - corrupted.resid
        csum = corrupted.resid[:, : shape.n_src_before_layer(first)].sum(1)

        def one_pass(t, m, c, p, d, s):
            return model.run_from_scan(
                jnp.int32(stage), t, m, c, p, None, positions, None, first, d, s
            )

        got = jax.vmap(one_pass, in_axes=(0, None, 0, 0, 0, 0))(
            clean, mask, corrupted, buffer, delta, csum
        )
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"delta {stage}")


@pytest.mark.parametrize("name", NAMES)
def test_suffix_of_a_mask_that_spares_earlier_receivers_is_the_full_forward(name):
    """The premise of the fast ACDC engine: with every receiver before `stage` intact, the
    forward restarted at `stage` from the clean buffer equals the whole masked forward."""
    model, clean, corrupt = setup(name)
    shape = model.graph_shape
    graph = jacdc.graph_of(shape)
    corrupted = corrupted_sources(model, corrupt)
    buffer = clean_run(model, clean)[1].resid
    last = 2 * shape.n_layers
    for stage in (last - 2, last - 1, last) if shape.has_mlp else (last - 2, last):
        # remove a random third of the edges whose receiver is at or after `stage`
        rng = np.random.default_rng(stage)
        later = [i for i, e in enumerate(graph.edges) if _stage_of(shape, e) >= stage]
        removed = rng.choice(later, size=max(1, len(later) // 3), replace=False)
        vec = np.ones(len(graph), np.float32)
        vec[removed] = 0.0
        mask = graph.from_vector(vec)
        full = batched(model, clean, mask, corrupted)[0]
        suffix = jax.vmap(
            lambda t, c, p: model.run_from_scan(stage, t, mask, c, p), in_axes=(0, 0, 0)
        )(clean, corrupted, buffer)
        np.testing.assert_allclose(suffix, full, atol=ATOL, rtol=0, err_msg=f"stage {stage}")


def _stage_of(shape, edge):
    if edge.field == "out":
        return 2 * shape.n_layers
    layer = edge.index[0]
    return 2 * layer + 1 if edge.field == "mlp" else 2 * layer


def test_one_compilation_serves_every_stage():
    model, clean, corrupt = setup("gpt2")
    shape = model.graph_shape
    corrupted = corrupted_sources(model, corrupt)
    buffer = clean_run(model, clean)[1].resid
    traces = []

    @eqx.filter_jit
    def evaluate(model, stage, tokens, mask, corrupted, buffer):
        traces.append(1)
        return jax.vmap(lambda t, c, p: model.run_from_scan(stage, t, mask, c, p))(
            tokens, corrupted, buffer
        )

    for stage in range(2 * shape.n_layers + 1):
        evaluate(model, jnp.int32(stage), clean, _random_mask(shape, stage), corrupted, buffer)
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_invalid_entries_change_nothing_on_the_unrolled_path(name):
    model, clean, corrupt = setup(name)
    corrupted = corrupted_sources(model, corrupt)
    quiet = _random_mask(model.graph_shape, 5, noisy_invalid=False)
    noisy = _random_mask(model.graph_shape, 5, noisy_invalid=True)
    for layers in ("unrolled", "scan"):
        a = _forward(model, clean, quiet, corrupted, layers)[0]
        b = _forward(model, clean, noisy, corrupted, layers)[0]
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=layers)


@pytest.mark.unchecked  # the errors users get
def test_bad_layers_and_buffer_errors():
    model, clean, corrupt = setup("gpt2")
    full = jacdc.EdgeMask.full(model.graph_shape)
    one = jax.tree.map(lambda x: x[0], corrupted_sources(model, corrupt))
    with pytest.raises(ValueError, match="layers must be 'scan' or 'unrolled', got 'loop'"):
        model(clean[0], full, one, layers="loop")
    buffer = clean_run(model, clean)[1].resid[0]
    with pytest.raises(ValueError, match=r"all 7 sources, got 3"):
        model.run_from_scan(2, clean[0], full, one, buffer[:3])
    with pytest.raises(ValueError, match=r"first_layer=3 needs .* 0 <= first_layer <= 2"):
        model.run_from_scan(2, clean[0], full, one, buffer, first_layer=3)
    with pytest.raises(ValueError, match="Stage 2 needs the outputs of 4 sources, got 2"):
        model.run_from(2, clean[0], full, one, buffer[:2])
    pre = jax.tree.map(lambda x: x[0], model.suffix_prefix(4, buffer[None], one.resid[None]))
    with pytest.raises(ValueError, match=r"not made for stage 2 \(which needs 4 and 2\)"):
        model.run_suffix(2, clean[0], full, one, pre)
    with pytest.raises(ValueError, match="stage must be a Python int in"):
        model.run_suffix(jnp.int32(2), clean[0], full, one, pre)
