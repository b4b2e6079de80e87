"""The FLOP floor model (`jacdc._floor`) against a hand count and XLA's cost analysis."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc import _floor
from jacdc.models import Transformer, TransformerConfig
from jacdc.tasks import Task, kl_metric


CONFIGS = {
    "gpt2-like": TransformerConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=128,
                                   d_vocab=300, n_ctx=16),
    "attn-only": TransformerConfig(n_layers=2, n_heads=8, d_model=64, d_head=8, d_mlp=None,
                                   d_vocab=500, n_ctx=16, positional="shortformer"),
    "tracr-like": TransformerConfig(n_layers=3, n_heads=2, d_model=32, d_head=16, d_mlp=64,
                                    d_vocab=50, n_ctx=16, positional="separate",
                                    normalization="none", act_fn="relu", causal=False),
}  # fmt: skip


def _task(model, batch=4, seq=12, positions=(10, 11)):
    rng = np.random.default_rng(0)
    clean = jnp.asarray(rng.integers(0, model.cfg.d_vocab, (batch, seq)), jnp.int32)
    corrupted = jnp.asarray(rng.integers(0, model.cfg.d_vocab, (batch, seq)), jnp.int32)
    pos = jnp.asarray(positions)
    return Task(clean=clean, corrupted=corrupted, corrupted_positions=None, logit_positions=pos,
                metrics={"kl_div": kl_metric(model, clean, pos)})  # fmt: skip


def test_floor_by_hand():
    """A 1-layer attention-only model: every term written out."""
    cfg = TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=None, d_vocab=10,
                            n_ctx=6)  # fmt: skip
    model = Transformer(cfg, key=jr.key(0))
    task = _task(model, batch=3, seq=5, positions=(4,))
    B, S, d, H, e, V, P = 3, 5, 8, 2, 4, 10, 1
    n_src = 1 + H  # the embedding and two heads
    layer = S * (3 * H * 2 * 1 * d + 3 * H * 2 * d * e + H * 4 * S * e + H * 2 * e * d)
    out = P * (2 * n_src * d + 2 * d * V)
    assert _floor.stage_floor_flops(model, task, 0) == B * (layer + out)
    assert _floor.stage_floor_flops(model, task, 2) == B * out  # the output node's tests
    terms = _floor.floor_terms(cfg, B, S, P, 0)
    assert terms["unembed"] == B * 2 * d * V and terms["attention"] == B * H * 4 * S * S * e


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_floor_against_xla_cost_analysis(name):
    model = Transformer(CONFIGS[name], key=jr.key(0))
    task = _task(model)
    L = model.cfg.n_layers
    previous = None
    for stage in (0, L, 2 * L):  # first, middle and the output node's stage
        floor = _floor.stage_floor_flops(model, task, stage)
        executed = _floor.executed_flops(model, task, stage)
        xla = _floor.xla_flops(model, task, stage, metric="kl_div")
        assert floor <= executed <= xla <= 1.75 * executed, (stage, floor, executed, xla)
        assert xla <= 3.5 * floor, (stage, floor, xla)
        if previous is not None:
            assert floor <= previous  # later stages need less
        previous = floor
    # The scan evaluator contracts over every source: more than the unrolled one at stage 0.
    assert _floor.executed_flops(model, task, 0, "scan") > _floor.executed_flops(model, task, 0)


def test_run_floor_counts_the_tests_of_a_run():
    model = Transformer(CONFIGS["gpt2-like"], key=jr.key(1))
    task = _task(model)
    result = jacdc.acdc(model, task, 1e-3, metric="kl_div", max_tests=60)
    floor = _floor.run_floor(model, task, result)
    assert (
        floor["n_tests"] == result.n_tests == sum(v["n_tests"] for v in floor["by_stage"].values())
    )
    stages = _floor.edge_test_stages(model.graph_shape)
    tested = [r["edge"] for r in result.log if not r["skipped"]]
    assert floor["flops"] == pytest.approx(
        sum(_floor.edge_test_floor_flops(model, task, i) for i in tested)
    )
    assert set(floor["by_stage"]) == {stages[i] for i in tested}
    assert len(stages) == len(jacdc.graph_of(model.graph_shape))  # every counted edge has a stage
