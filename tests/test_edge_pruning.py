import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc import _edge_pruning, _sp
from jacdc.models import Transformer, TransformerConfig
from jacdc.tasks import Task, kl_metric


CFG = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6)


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
def extremes(tiny):
    model, task = tiny
    before = _edge_pruning._TRACES["train"]
    results = jacdc.edge_pruning_sweep(
        model, task, [1e-9, 1e4], key=jr.key(0), metric="kl_div", n_steps=150, lr=0.1
    )
    return results, _edge_pruning._TRACES["train"] - before


def test_lambda_extremes(tiny, extremes):
    model, task = tiny
    n = len(jacdc.graph_of(model.graph_shape))
    (tiny_lam, huge_lam), traces = extremes
    assert traces == 1
    assert tiny_lam.present.sum() >= 0.9 * n
    assert huge_lam.present.sum() <= 0.05 * n
    assert huge_lam.density[-1] < 0.05 < 0.9 < tiny_lam.density[-1]
    assert tiny_lam.scores.shape == huge_lam.scores.shape == (n,)
    assert (tiny_lam.present == (tiny_lam.scores >= 0)).all()  # deterministic circuit
    assert tiny_lam.metric[-1] < huge_lam.metric[-1]


def test_invalid_entries_stay_untouched(tiny, extremes):
    model, _ = tiny
    graph = jacdc.graph_of(model.graph_shape)
    valid = graph.validity()
    (_, huge_lam), _ = extremes
    for field, ok in valid.items():
        values = np.asarray(getattr(huge_lam.log_alpha, field))
        assert (values[~ok] == np.float32(_sp.INIT_LOG_ALPHA)).all(), field
        if ok.any():
            assert (values[ok] < 0).all(), field  # every real edge moved (pruned)


def test_target_mode_runs_without_recompiling(tiny, extremes):
    model, task = tiny
    before = _edge_pruning._TRACES["train"]
    results = jacdc.edge_pruning_sweep(
        model,
        task,
        [0.5, 0.9],
        key=jr.key(1),
        metric="kl_div",
        n_steps=150,
        lr=0.1,
        mode="target",
        warmup=0.5,
    )
    assert _edge_pruning._TRACES["train"] == before  # same shapes as `extremes`
    for result, target in zip(results, (0.5, 0.9)):
        assert np.isfinite(result.loss).all()
        # The expected sparsity follows the rising target (loosely, after 150 steps).
        assert 1 - result.density[-1] == pytest.approx(target, abs=0.15)


@pytest.mark.parametrize(
    "lambdas, kwargs, match",
    [
        ([], {}, "empty"),
        ([0.0], {}, "positive"),
        ([-1.0], {}, "positive"),
        ([1.0], {"mode": "nope"}, "mode"),
        ([1.5], {"mode": "target"}, r"\(0, 1\]"),
        ([1.0], {"metric": "nope"}, "Unknown metric"),
    ],
)
@pytest.mark.unchecked  # the errors users get
def test_bad_arguments(tiny, lambdas, kwargs, match):
    model, task = tiny
    kwargs = {"metric": "kl_div", **kwargs}
    with pytest.raises(ValueError, match=match):
        jacdc.edge_pruning_sweep(model, task, lambdas, key=jr.key(0), n_steps=2, **kwargs)
