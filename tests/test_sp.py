import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import assert_trees_close

import jacdc
from jacdc import _sp
from jacdc.models import Transformer, TransformerConfig
from jacdc.tasks import Task, kl_metric


CFG = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6)
N_STEPS = 20


def make_tiny(cfg=CFG, key=0, init_std=0.5):
    model = Transformer(cfg, key=jr.key(key), init_std=init_std)
    rng = np.random.default_rng(key)
    tokens = jnp.asarray(rng.integers(0, cfg.d_vocab, (4, 6)), jnp.int32)
    corrupted = jnp.asarray(rng.integers(0, cfg.d_vocab, (4, 6)), jnp.int32)
    positions = jnp.array([4, 5])
    task = Task(
        clean=tokens,
        corrupted=corrupted,
        corrupted_positions=None,
        logit_positions=positions,
        metrics={"kl_div": kl_metric(model, tokens, positions)},
    )
    return model, task


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


@pytest.fixture(scope="module")
def sweep8(tiny):
    model, task = tiny
    lambdas = np.logspace(-3, 2, 8)
    before = _sp._TRACES["sp_train"]
    results = jacdc.sp_sweep(
        model, task, lambdas, key=jr.key(7), metric="kl_div", n_steps=N_STEPS, lr=0.05
    )
    return lambdas, results, _sp._TRACES["sp_train"] - before


def test_hard_concrete_constants():
    assert _sp.INIT_LOG_ALPHA == pytest.approx(np.log(0.8333333 / (1 - 0.8333333)), abs=1e-5)
    assert _sp.INIT_LOG_ALPHA == pytest.approx(1.609, abs=1e-3)
    la = jacdc.NodeMask.full(jacdc.GraphShape(2, 2, True), _sp.INIT_LOG_ALPHA)
    expected = 1 / (1 + np.exp(-(_sp.INIT_LOG_ALPHA - (2 / 3) * np.log(0.1 / 1.1))))
    assert float(_sp.sp_regulariser(la)) == pytest.approx(expected, rel=1e-5)
    # Samples lie in [0, 1] and hit both ends for extreme log alpha.
    s = _sp.sample_hard_concrete(jnp.array([-20.0, 0.0, 20.0] * 100), key=jr.key(0))
    assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
    assert (np.asarray(s[0::3]) == 0).all() and (np.asarray(s[2::3]) == 1).all()


def test_regulariser_averages_hook_points():
    shape = jacdc.GraphShape(1, 2, True)
    la = jacdc.NodeMask(
        q=jnp.array([[50.0, -50.0]]),  # hook_q mean 0.5
        k=jnp.full((1, 2), 50.0),  # 1
        v=jnp.full((1, 2), -50.0),  # 0
        mlp=jnp.array([50.0]),  # 1
    )
    del shape
    assert float(_sp.sp_regulariser(la)) == pytest.approx((0.5 + 1 + 0 + 1) / 4, abs=1e-6)


def test_node_masks_on_the_edge_mask(tiny):
    model, task = tiny
    shape = model.graph_shape
    node = jacdc.NodeMask.full(shape)
    node = jacdc.NodeMask(
        q=node.q.at[0, 1].set(0.3),
        k=node.k,
        v=node.v.at[1, 0].set(0.6),
        mlp=node.mlp.at[0].set(0.2),
    )
    mask = jacdc.node_edge_mask(shape, node)
    assert float(mask.direct[0, 1, 0]) == pytest.approx(0.3)
    assert float(mask.direct[1, 0, 2]) == pytest.approx(0.6)
    valid = jacdc.graph_of(shape).validity()
    mlp0 = shape.mlp_src(0)
    for field in ("q", "k", "v", "mlp", "out"):
        values = np.asarray(getattr(mask, field))
        col = values[..., mlp0][valid[field][..., mlp0]]
        assert col.size and np.allclose(col, 0.2)  # every reader of MLP 0 sees m = 0.2
        others = np.delete(values, mlp0, axis=-1)
        assert np.allclose(others, 1.0)
    # The q unit rule m * q + (1 - m) * cache, for zero (biases included) and corrupted caches.
    tokens = task.clean[0]
    clean = jacdc.EdgeMask.full(shape)
    forward = eqx.filter_jit(lambda m, t, e, c: m(t, e, c)[1])
    for zero in (True, False):
        cache = jax.tree.map(lambda x: x[0], jacdc.unit_ablation_sources(model, task, zero))
        online = forward(model, tokens, clean, cache)
        masked = forward(model, tokens, mask, cache)
        want = 0.3 * online.q[0, 1] + 0.7 * cache.q[0, 1]
        np.testing.assert_allclose(masked.q[0, 1], want, rtol=1e-5, atol=1e-6)
        if zero:
            assert not np.asarray(cache.q).any()


def test_circuit_from_units_rules():
    shape = jacdc.GraphShape(2, 2, True)
    graph = jacdc.graph_of(shape)
    full = jacdc.NodeMask.full(shape)
    to_bool = lambda n: jax.tree.map(lambda x: np.asarray(x) > 0.5, n)
    assert jacdc.circuit_from_units(shape, to_bool(full)).all()

    def removed(node):
        present = jacdc.circuit_from_units(shape, to_bool(node))
        return {graph.names[i] for i in np.nonzero(~present)[0]}

    # Dropping q of head 1.0: its incoming edges and its direct edge.
    gone = removed(jacdc.NodeMask(full.q.at[1, 0].set(0), full.k, full.v, full.mlp))
    assert gone == {n for n in graph.names if n.startswith("blocks.1.hook_q_input[0] <-")} | {
        "blocks.1.attn.hook_q[0] <- blocks.1.hook_q_input[0]"
    }
    # Dropping q, k, v of head 0.1: also every outgoing edge of its result.
    gone = removed(
        jacdc.NodeMask(
            full.q.at[0, 1].set(0), full.k.at[0, 1].set(0), full.v.at[0, 1].set(0), full.mlp
        )
    )
    out = {n for n in graph.names if n.endswith("<- blocks.0.attn.hook_result[1]")}
    prefixes = [f"blocks.0.hook_{c}_input[1] <-" for c in "qkv"]
    prefixes += [f"blocks.0.attn.hook_{c}[1] <-" for c in "qkv"]
    inputs = {n for n in graph.names if n.startswith(tuple(prefixes))}
    assert len(out) == 2 + 3 * 2 + 1 and len(inputs) == 3 * (1 + 1)
    assert gone == out | inputs
    # Dropping MLP 0: edges into its input and out of its output.
    gone = removed(jacdc.NodeMask(full.q, full.k, full.v, full.mlp.at[0].set(0)))
    assert gone == {
        n
        for n in graph.names
        if n.startswith("blocks.0.hook_mlp_in <-") or n.endswith("<- blocks.0.hook_mlp_out")
    }


def test_sweep_compiles_once_and_again_not(tiny, sweep8):
    model, task = tiny
    lambdas, results, traces = sweep8
    assert traces == 1
    assert [r.lam for r in results] == pytest.approx(lambdas.tolist())
    assert all(r.loss.shape == (N_STEPS,) for r in results)
    # New lambdas and learning rate, same shapes: no new trace.
    before = _sp._TRACES["sp_train"]
    again = jacdc.sp_sweep(
        model, task, lambdas * 3, key=jr.key(8), metric="kl_div", n_steps=N_STEPS, lr=0.01
    )
    assert _sp._TRACES["sp_train"] == before
    assert len(again) == 8


def test_each_lane_equals_a_single_run(tiny, sweep8):
    model, task = tiny
    lambdas, results, _ = sweep8
    keys = jr.split(jr.key(7), 8)
    for i in (0, 5, 7):
        single = jacdc.subnetwork_probing(
            model,
            task,
            float(lambdas[i]),
            key=keys[i],
            metric="kl_div",
            n_steps=N_STEPS,
            lr=0.05,
        )
        assert_trees_close(single.log_alpha, results[i].log_alpha, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(single.loss, results[i].loss, rtol=1e-4, atol=1e-6)
        assert (single.present == results[i].present).all()


def test_strong_penalty_prunes(tiny, sweep8):
    lambdas, results, _ = sweep8
    # log alpha falls faster under a stronger penalty; the strongest lane ends with fewer units.
    mean_la = [float(np.mean(jax.tree.leaves(jax.tree.map(np.mean, r.log_alpha)))) for r in results]
    assert mean_la[-1] < mean_la[0]
    assert results[-1].reg[-1] < results[0].reg[-1]


def test_deterministic_variant(tiny):
    model, task = tiny
    r = jacdc.subnetwork_probing(
        model,
        task,
        100.0,
        key=jr.key(1),
        metric="kl_div",
        n_steps=N_STEPS,
        lr=0.05,
        deterministic=True,
    )
    keep = jax.tree.map(lambda la: la >= 0, r.log_alpha)
    chex.assert_trees_all_equal(keep, r.keep)
    assert (r.present == jacdc.circuit_from_units(model.graph_shape, keep)).all()


@pytest.mark.parametrize("lambdas", [[], [1.0, -1.0], [float("nan")]])
def test_bad_lambdas(tiny, lambdas):
    model, task = tiny
    with pytest.raises(ValueError, match="lambda"):
        jacdc.sp_sweep(model, task, lambdas, key=jr.key(0), metric="kl_div", n_steps=2)


def test_single_run_rejects_negative_lambda(tiny):
    # lambda = 0 is allowed: the paper's launcher ran its smallest lambdas as 0.
    model, task = tiny
    with pytest.raises(ValueError, match=">= 0"):
        jacdc.subnetwork_probing(model, task, -0.5, key=jr.key(0), metric="kl_div")
    with pytest.raises(ValueError, match="Unknown metric"):
        jacdc.sp_sweep(model, task, [1.0], key=jr.key(0), metric="nope", n_steps=2)


def test_paper_lambdas_are_formatted_to_three_decimals():
    # The original launcher passed f"{lam:.3f}": the stored tracr SP runs' scores are exactly
    # these values, and 10^linspace(-4, 2, 21) starts with three runs at lambda 0.
    tracr = jacdc.paper_lambdas(jacdc.sp_lambdas("tracr-reverse", "l2"))
    assert tracr.tolist() == [
        0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.063, 0.126, 0.251, 0.501, 1.0
    ]  # fmt: skip
    loss = jacdc.paper_lambdas(jacdc.sp_lambdas("ioi", "logit_diff"))
    assert loss[:4].tolist() == [0.0, 0.0, 0.0, 0.001] and loss[-1] == 100.0


def test_paper_lambda_grids():
    assert np.allclose(jacdc.sp_lambdas("tracr-reverse", "l2"), np.logspace(-3, 0, 11))
    base = jacdc.sp_lambdas("ioi", "kl_div")
    assert len(base) == 32 and base[0] == pytest.approx(0.01) and base[-1] == pytest.approx(250)
    assert np.allclose(jacdc.sp_lambdas("ioi", "logit_diff"), np.logspace(-4, 2, 21))
