"""The memory model against XLA's own figures for the compiled steps.

XLA's figure is `arguments + outputs + temp - alias` of
`jax.jit(step).lower(abstract inputs).compile().memory_analysis()`
([`jacdc._memory.xla_memory`][]): nothing is allocated, only compiled.
"""

import math

import jax
import jax.random as jr
import pytest

from jacdc import _memory
from jacdc.models import Transformer, TransformerConfig, empty_sources


def config(L, H, d, e, m, V):
    return TransformerConfig(n_layers=L, n_heads=H, d_model=d, d_head=e, d_mlp=m, d_vocab=V,
                             n_ctx=64)  # fmt: skip


# (algorithm, config, batch, seq, keyword arguments of both the model and xla_memory)
SHAPES = [
    ("acdc", config(4, 4, 64, 16, 256, 500), 8, 12, dict(candidates=4)),
    ("acdc", config(3, 4, 48, 12, None, 200), 6, 10, dict(candidates=2)),
    ("acdc", config(2, 8, 32, 8, 128, 300), 8, 8, dict(candidates=8, suffix=False)),
    ("acdc", config(4, 4, 64, 16, 256, 500), 8, 12, dict(candidates=4, stage=0, layers="unrolled")),
    ("acdc", config(2, 4, 64, 16, 256, 500), 4, 12, dict(candidates=2, stage=3, layers="unrolled")),
    ("eap", config(3, 4, 32, 8, 128, 300), 8, 8, dict(steps=1)),
    ("eap", config(2, 4, 64, 16, 256, 500), 4, 12, dict(steps=3)),
    ("sp", config(2, 4, 32, 8, 128, 300), 8, 8, dict(n_lambdas=4)),
    ("sp", config(3, 4, 48, 12, None, 200), 6, 10, dict(n_lambdas=2)),
]


def predict(algorithm, cfg, batch, seq, kwargs):
    if algorithm == "acdc":
        return _memory.acdc_memory(cfg, batch, seq, **kwargs)
    if algorithm == "eap":
        return _memory.eap_memory(cfg, batch, seq, **kwargs)
    return _memory.sp_memory(cfg, batch, seq, n_steps=4, **kwargs)


@pytest.mark.parametrize("algorithm, cfg, batch, seq, kwargs", SHAPES)
def test_prediction_within_25_percent_of_xla(algorithm, cfg, batch, seq, kwargs):
    estimate = predict(algorithm, cfg, batch, seq, kwargs)
    extra = {"n_steps": 4} if algorithm == "sp" else {}
    xla = _memory.xla_memory(algorithm, cfg, batch, seq, **kwargs, **extra)
    ratio = estimate.step / xla["total"]
    assert 0.75 <= ratio <= 1.25, (ratio, estimate, xla)
    # The arguments are counted exactly (including the ones jit drops because the step never
    # reads them, e.g. the embedding tables when the scan evaluator reads the clean sources).
    assert abs(estimate.arguments - xla["arguments"]) <= 0.01 * xla["arguments"]


@pytest.mark.parametrize(
    "cfg",
    [config(2, 4, 64, 16, 256, 500), config(3, 4, 48, 12, None, 200),
     TransformerConfig(n_layers=2, n_heads=1, d_model=12, d_head=4, d_mlp=8, d_vocab=5,
                       n_ctx=6, d_vocab_out=3, normalization="none", positional="separate")],
)  # fmt: skip
def test_exact_sizes(cfg):
    model = jax.eval_shape(lambda: Transformer(cfg, key=jr.key(0)))
    assert _memory.weight_bytes(cfg) == sum(4 * math.prod(x.shape) for x in jax.tree.leaves(model))
    sources = jax.eval_shape(lambda: empty_sources(cfg, 5, (3,)))
    assert _memory.source_bytes(cfg, 3, 5) == sum(
        4 * math.prod(x.shape) for x in jax.tree.leaves(sources)
    )


def test_sharding_divides_per_device_terms():
    cfg = config(2, 4, 64, 16, 256, 500)
    one = _memory.acdc_memory(cfg, 8, 12, candidates=8)
    many = _memory.acdc_memory(cfg, 8, 12, candidates=8, mesh_shape=(4, 2))
    assert many.parts["weights"] == one.parts["weights"]  # replicated
    assert many.parts["corrupted sources"] * 4 == one.parts["corrupted sources"]
    assert many.parts["candidate masks"] * 2 == one.parts["candidate masks"]
    assert many.total < one.total / 4
    sp_one = _memory.sp_memory(cfg, 8, 12, n_lambdas=4)
    sp_many = _memory.sp_memory(cfg, 8, 12, n_lambdas=4, mesh_shape=(2, 2))
    assert sp_many.temp < sp_one.temp / 3


def test_worst_stage_and_printout():
    cfg = config(2, 4, 64, 16, 256, 500)
    worst = _memory.acdc_memory(cfg, 8, 12, candidates=4, layers="unrolled")
    for stage in range(5):
        one = _memory.acdc_memory(cfg, 8, 12, candidates=4, stage=stage, layers="unrolled")
        assert one.step <= worst.step
        # the clean sources are counted once: as the step's argument (stage > 0) or as held
        buffer = 8 * cfg.graph_shape.n_src * 12 * cfg.d_model * 4
        held = one.parts["held between calls"] - (_memory.weight_bytes(cfg) - one.parts["weights"])
        assert one.parts["clean sources"] + held == buffer
    assert worst.stage is not None and f"stage {worst.stage}" in str(worst)
    assert "MiB" in str(worst) and str(worst).startswith("acdc: ~")
    no_suffix = _memory.acdc_memory(cfg, 8, 12, candidates=4, suffix=False, layers="unrolled")
    assert no_suffix.persistent == 0 and no_suffix.stage == 0
    scan = _memory.acdc_memory(cfg, 8, 12, candidates=4)
    assert "every stage (scan)" in str(scan)
    # the scan evaluator reads the clean sources; without suffix recomputation it does not
    no_clean = _memory.acdc_memory(cfg, 8, 12, candidates=4, suffix=False)
    assert scan.parts["clean sources"] > 0 and no_clean.parts["clean sources"] == 0
    # the model's weights are on the device once per copy: stacked (argument) + unstacked
    assert scan.parts["weights"] + scan.persistent >= _memory.weight_bytes(cfg)


def test_check_fits():
    cfg = config(2, 4, 64, 16, 256, 500)
    _memory.check_fits(_memory.acdc_memory(cfg, 8, 12, candidates=4))  # a few MiB: fits
    free, source = _memory.device_memory()
    assert free is None or free > 0
    assert source
    huge = _memory.sp_memory(
        TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072,
                          d_vocab=50257, n_ctx=1024),
        100_000, 128, n_lambdas=21,
    )  # fmt: skip
    with pytest.raises(_memory.MemoryBudgetError, match="Reduce the batch"):
        _memory.check_fits(huge)


@pytest.mark.unchecked  # the errors users get
def test_xla_memory_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="Unknown algorithm"):
        _memory.xla_memory("hisp", config(1, 1, 8, 8, None, 5), 2, 3)


def test_banded_runs_count_the_difference_buffer():
    gpt2 = TransformerConfig(n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072,
                             d_vocab=50257, n_ctx=1024)  # fmt: skip
    big = _memory.acdc_memory(gpt2, 50, 15, candidates=4).parts
    # clean - corrupted: one more buffer of every source (50 x 157 x 15 x 768 float32)
    assert big["clean - corrupted (banded)"] == big["clean sources"] == 50 * 157 * 15 * 768 * 4
    small = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                              n_ctx=6)  # fmt: skip
    assert _memory.acdc_memory(small, 4, 5, candidates=4).parts["clean - corrupted (banded)"] == 0
