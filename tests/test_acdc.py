import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc import _acdc, engine
from jacdc.models import Transformer, TransformerConfig
from jacdc.tasks import AbstractMetric, Task, kl_metric


CONFIGS = {
    "gpt2-like": TransformerConfig(
        n_layers=2, n_heads=3, d_model=16, d_head=4, d_mlp=32, d_vocab=11, n_ctx=8
    ),
    "attn-only": TransformerConfig(
        n_layers=2,
        n_heads=4,
        d_model=16,
        d_head=4,
        d_mlp=None,
        d_vocab=11,
        n_ctx=8,
        positional="shortformer",
    ),
    "tracr-like": TransformerConfig(
        n_layers=3,
        n_heads=1,
        d_model=16,
        d_head=4,
        d_mlp=8,
        d_vocab=5,
        n_ctx=6,
        d_vocab_out=3,
        act_fn="relu",
        normalization="none",
        positional="separate",
        causal=False,
    ),
}
THRESHOLDS = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def make_task(cfg, key=1, batch=6, seq=5):
    model = Transformer(cfg, key=jr.key(key))
    rng = np.random.default_rng(key)
    tokens = jnp.asarray(rng.integers(0, cfg.d_vocab, (batch, seq)), jnp.int32)
    positions = jnp.array([seq - 2, seq - 1])
    task = Task(
        clean=tokens,
        corrupted=tokens[::-1],
        corrupted_positions=None,
        logit_positions=positions,
        metrics={"kl_div": kl_metric(model, tokens, positions)},
    )
    return model, task


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("zero_ablation", [False, True])
def test_fast_engine_equals_reference(arch, zero_ablation):
    model, task = make_task(CONFIGS[arch])
    ref = jacdc.acdc_sweep(
        model, task, THRESHOLDS, metric="kl_div", zero_ablation=zero_ablation, engine="reference"
    )
    sizes = set()
    for layers, suffix, bands in [
        ("scan", True, False),
        ("scan", True, True),  # banded: the scan from the stage's band on, shared prefix
        ("scan", False, False),
        ("unrolled", True, False),
    ]:
        fast = jacdc.acdc_sweep(
            model,
            task,
            THRESHOLDS,
            metric="kl_div",
            zero_ablation=zero_ablation,
            suffix=suffix,
            layers=layers,
            bands=bands,
        )
        for r, f in zip(ref, fast):
            assert r.decisions == f.decisions
            np.testing.assert_array_equal(r.present, f.present)
            assert r.n_tests == f.n_tests
            assert abs(r.metric - f.metric) < 1e-6
            sizes.add(r.n_edges)
    # The thresholds must actually produce different circuits, or the test proves little.
    assert len(sizes) >= 3


@pytest.mark.parametrize("candidates", [1, 3, 64])
def test_fast_engine_independent_of_lane_count(candidates):
    model, task = make_task(CONFIGS["gpt2-like"], key=3)
    ref = jacdc.acdc(model, task, 3e-3, metric="kl_div", engine="reference")
    fast = jacdc.acdc(model, task, 3e-3, metric="kl_div", candidates=candidates, suffix=True)
    assert ref.decisions == fast.decisions


def test_abs_value_rule():
    model, task = make_task(CONFIGS["gpt2-like"], key=4)
    ref = jacdc.acdc(model, task, 2e-3, metric="kl_div", abs_value=True, engine="reference")
    fast = jacdc.acdc(model, task, 2e-3, metric="kl_div", abs_value=True)
    plain = jacdc.acdc(model, task, 2e-3, metric="kl_div")
    assert ref.decisions == fast.decisions
    for rec in ref.log:
        if not rec["skipped"]:
            assert rec["delta"] >= 0
            assert rec["removed"] == (rec["delta"] < 2e-3)
    # |delta| removes no more than delta does: a metric decrease is not free any more.
    assert ref.n_edges >= plain.n_edges


def test_decision_rule_in_log():
    """Each test compares against the *current* circuit's metric with a strict `<`."""
    model, task = make_task(CONFIGS["attn-only"], key=5)
    tau = 1e-3
    result = jacdc.acdc(model, task, tau, metric="kl_div", engine="reference")
    current = result.initial_metric
    for rec in result.log:
        if rec["skipped"]:
            continue
        assert rec["before"] == pytest.approx(current, abs=1e-9)
        assert rec["removed"] == (rec["after"] - rec["before"] < tau)
        if rec["removed"]:
            current = rec["after"]
    assert result.metric == pytest.approx(current, abs=1e-7)


def test_node_and_sender_order():
    shape = jacdc.GraphShape(n_layers=2, n_heads=3, has_mlp=True, n_embed=2)
    nodes = jacdc.acdc_nodes(shape)
    names = [n.name for n in nodes]
    assert names[:7] == [
        "blocks.1.hook_resid_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.hook_mlp_in",
        "blocks.1.attn.hook_result[2]",
        "blocks.1.attn.hook_result[1]",
        "blocks.1.attn.hook_result[0]",
        "blocks.1.attn.hook_v[2]",
    ]
    assert names.index("blocks.1.attn.hook_q[0]") < names.index("blocks.1.hook_v_input[2]")
    assert names[-1] == "blocks.0.hook_q_input[0]"
    graph = jacdc.graph_of(shape)
    q_in = next(n for n in nodes if n.name == "blocks.1.hook_q_input[1]")
    senders = [graph.names[i].split(" <- ")[1] for i in q_in.incoming]
    assert senders == [
        "blocks.0.hook_mlp_out",
        "blocks.0.attn.hook_result[2]",
        "blocks.0.attn.hook_result[1]",
        "blocks.0.attn.hook_result[0]",
        "hook_embed",
        "hook_pos_embed",
    ]
    assert q_in.groups == (
        (q_in.incoming[0],),
        q_in.incoming[1:4],
        (q_in.incoming[4],),
        (q_in.incoming[5],),
    )
    mlp_in = next(n for n in nodes if n.name == "blocks.1.hook_mlp_in")
    first = graph.names[mlp_in.incoming[0]].split(" <- ")[1]
    assert first == "blocks.1.attn.hook_result[2]"  # a head feeds its own layer's MLP
    tested = sorted(i for n in nodes for i in n.incoming)
    assert tested == list(range(len(graph)))  # every counted edge is tested exactly once


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("zero_ablation", [False, True])
def test_full_circuit_has_zero_kl(arch, zero_ablation):
    model, task = make_task(CONFIGS[arch])
    corrupted = jacdc.ablation_sources(model, task, zero_ablation)
    full = jacdc.EdgeMask.full(model.graph_shape)
    assert float(jacdc.metric_of_mask(model, task, full, corrupted, "kl_div")) < 1e-6
    empty = jacdc.EdgeMask.full(model.graph_shape, 0.0)
    assert float(jacdc.metric_of_mask(model, task, empty, corrupted, "kl_div")) > 1e-4


def test_metrics_of_masks_equal_metric_of_mask():
    # What result files record: every metric of several circuits in one call.
    model, task = make_task(CONFIGS["gpt2-like"])
    graph = jacdc.graph_of(model.graph_shape)
    rng = np.random.default_rng(4)
    vecs = (rng.random((3, len(graph))) < 0.5).astype(np.float32)
    corrupted = jacdc.ablation_sources(model, task, False)
    got = jacdc.metrics_of_masks(model, task, graph.from_vector(jnp.asarray(vecs)), corrupted)
    assert set(got) == set(task.metrics) and got["kl_div"].shape == (3,)
    for i, v in enumerate(vecs):
        want = float(jacdc.metric_of_mask(model, task, graph.from_vector(v), corrupted, "kl_div"))
        np.testing.assert_allclose(float(got["kl_div"][i]), want, rtol=1e-6, atol=1e-9)
    assert len({float(x) for x in got["kl_div"]}) == 3  # three different circuits


@pytest.mark.parametrize("layers", ["scan", "unrolled"])
def test_one_compilation_per_input_shape(layers):
    model, task = make_task(CONFIGS["gpt2-like"], key=6)
    _acdc.TRACE_COUNTS.clear()
    run = jacdc.acdc_sweep(
        model, task, [1e-3, 1e-2], metric="kl_div", candidates=8, suffix=True, layers=layers
    )
    assert run[0].n_calls > 10
    first = dict(_acdc.TRACE_COUNTS)
    assert first and all(count == 1 for count in first.values())
    if layers == "scan":  # the stage is traced: one compilation for the whole run
        assert list(first) == [("scan", (8, len(jacdc.graph_of(model.graph_shape))), False, 0)]
    else:  # one per stage the run visited
        stages = {stage for stage, _ in first}
        assert len(stages) > 1 and stages <= set(range(2 * model.cfg.n_layers + 1))
    # Other thresholds, the other ablation, new token values: nothing is traced again.
    other = eqx.tree_at(lambda t: t.corrupted, task, task.corrupted[::-1])
    jacdc.acdc_sweep(
        model,
        other,
        [5e-3, 2e-2],
        metric="kl_div",
        zero_ablation=True,
        candidates=8,
        suffix=True,
        layers=layers,
    )
    assert dict(_acdc.TRACE_COUNTS) == first


class _NaNAfterRemoval(AbstractMetric):
    inner: AbstractMetric

    def per_example(self, logits):
        return self.inner.per_example(logits)

    def __call__(self, logits):
        value = self.inner(logits)
        return jnp.where(value > 1e-7, jnp.nan, value)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_nan_metric_names_edge_and_step(engine):
    model, task = make_task(CONFIGS["gpt2-like"])
    task = eqx.tree_at(lambda t: t.metrics, task, {"bad": _NaNAfterRemoval(task.metrics["kl_div"])})
    with pytest.raises(
        ValueError, match=r"metric is nan after removing edge 'blocks.1.hook_resid_post <- .*test 1"
    ):
        jacdc.acdc(model, task, 0.01, metric="bad", engine=engine)


@pytest.mark.unchecked  # the errors users get
def test_bad_input():
    model, task = make_task(CONFIGS["gpt2-like"])
    with pytest.raises(ValueError, match="finite and >= 0"):
        jacdc.acdc(model, task, -0.1, metric="kl_div")
    with pytest.raises(ValueError, match="No thresholds"):
        jacdc.acdc_sweep(model, task, [], metric="kl_div")
    with pytest.raises(ValueError, match="Unknown metric 'logit_diff'.*kl_div"):
        jacdc.acdc(model, task, 0.1, metric="logit_diff")
    with pytest.raises(ValueError, match="same shape"):
        Task(
            clean=task.clean,
            corrupted=task.clean[:, :3],
            corrupted_positions=None,
            logit_positions=task.logit_positions,
            metrics=task.metrics,
        )
    with pytest.raises(ValueError, match="non-empty"):
        Task(
            clean=task.clean[:0],
            corrupted=task.clean[:0],
            corrupted_positions=None,
            logit_positions=task.logit_positions,
            metrics=task.metrics,
        )
    bad = eqx.tree_at(lambda t: t.clean, task, task.clean.at[0, 0].set(99))
    with pytest.raises(ValueError, match=r"\[0, 11\)"):
        jacdc.acdc(model, bad, 0.1, metric="kl_div")
    with pytest.raises(ValueError, match="engine"):
        jacdc.acdc(model, task, 0.1, metric="kl_div", engine="turbo")


def test_interrupted_run_resumes_to_the_same_result():
    model, task = make_task(CONFIGS["gpt2-like"], key=7)
    taus = [1e-3, 1e-2]
    whole = jacdc.acdc_sweep(model, task, taus, metric="kl_div", suffix=True)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        jacdc.acdc_sweep(
            model,
            task,
            taus,
            metric="kl_div",
            checkpoint=saved.append,
            stop_after_nodes=5,
            suffix=True,
        )
    assert len(saved) == 5
    import json

    state = json.loads(json.dumps(saved[-1]))  # what the CLI writes to disk
    resumed = jacdc.acdc_sweep(model, task, taus, metric="kl_div", resume=state, suffix=True)
    for w, r in zip(whole, resumed):
        assert w.decisions == r.decisions
        np.testing.assert_array_equal(w.present, r.present)
        assert w.metric == r.metric


def test_result_mask_round_trip():
    model, task = make_task(CONFIGS["tracr-like"])
    result = jacdc.acdc(model, task, 1e-2, metric="kl_div")
    graph = result.graph
    assert graph.edges_from_mask(result.mask) == result.present_ids
    corrupted = jacdc.ablation_sources(model, task, False)
    value = float(jacdc.metric_of_mask(model, task, result.mask, corrupted, "kl_div"))
    assert value == pytest.approx(result.metric, abs=1e-6)


# Tiny random models of every family (see `tests/test_families.py` for their mask semantics).
_FAMILY_BASE = dict(n_layers=2, n_heads=2, d_model=16, d_head=4, d_mlp=16, d_vocab=11, n_ctx=8)
_RMS_ROPE = dict(normalization="RMS", positional="rotary", gated_mlp=True, act_fn="silu")
FAMILY_CONFIGS = {
    "neox-like": TransformerConfig(
        **_FAMILY_BASE, act_fn="gelu", positional="rotary", rotary_dim=2, parallel_attn_mlp=True
    ),
    "llama-like": TransformerConfig(
        **_FAMILY_BASE, **_RMS_ROPE, n_kv_heads=1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ),
    "qwen2-like": TransformerConfig(**_FAMILY_BASE, **_RMS_ROPE, rope_theta=1e6),  # biases
    "mistral-like": TransformerConfig(**_FAMILY_BASE, **_RMS_ROPE, sliding_window=3),
    "gemma2-like": TransformerConfig(
        **_FAMILY_BASE, **{**_RMS_ROPE, "act_fn": "gelu_pytorch_tanh"}, n_kv_heads=1,
        post_norms=True, embed_scale=4.0, attn_softcap=0.5, final_softcap=1.0,
        sliding_window=(3, None), attn_scale=2.5,
    ),
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("zero_ablation", [False, True])
def test_fast_engine_equals_reference_on_every_family(arch, zero_ablation):
    model, task = make_task(FAMILY_CONFIGS[arch])
    ref = jacdc.acdc_sweep(
        model, task, THRESHOLDS, metric="kl_div", zero_ablation=zero_ablation, engine="reference"
    )
    sizes = {r.n_edges for r in ref}
    variants = [("scan", False), ("unrolled", False)]
    if not model.cfg.post_norms:  # banded evaluators (Gemma-2's post-norms: refused, below)
        variants.append(("scan", True))
    for layers, bands in variants:
        fast = jacdc.acdc_sweep(
            model, task, THRESHOLDS, metric="kl_div", zero_ablation=zero_ablation,
            layers=layers, bands=bands,
        )  # fmt: skip
        for r, f in zip(ref, fast):
            assert r.decisions == f.decisions, (layers, bands)
            np.testing.assert_array_equal(r.present, f.present)
            assert r.n_tests == f.n_tests
            assert abs(r.metric - f.metric) < 1e-6
    assert len(sizes) >= 3  # the thresholds give different circuits


def test_banded_evaluators_one_compilation_per_band():
    model, task = make_task(CONFIGS["tracr-like"], key=6)  # 3 layers: bands 3, 2, 1, 0
    L = model.cfg.n_layers
    assert [engine.band_start(L, s) for s in range(2 * L + 1)] == [0, 0, 1, 1, 2, 2, 3]
    assert [engine.band_start(12, s) for s in (24, 23, 22, 20, 18, 16, 14, 8, 0)] == [
        12, 11, 11, 10, 8, 8, 4, 4, 0,
    ]  # fmt: skip
    n_edges = len(jacdc.graph_of(model.graph_shape))
    with pytest.raises(ValueError, match=r"a layer count in \[0, 3\], got 4"):
        engine.Evaluator(model, task, None, "kl_div", 4, bands=True, tail=4)
    _acdc.TRACE_COUNTS.clear()
    jacdc.acdc_sweep(model, task, [1e-3, 1e-2], metric="kl_div", candidates=4, bands=True, tail=0)
    assert dict(_acdc.TRACE_COUNTS) == {("scan", (4, n_edges), False, b): 1 for b in range(L + 1)}
    # The default: the last two layers' stages (and the output) get one unrolled evaluator
    # each; the earlier ones keep their band (layer 0's: stages 0 and 1).
    _acdc.TRACE_COUNTS.clear()
    results = jacdc.acdc_sweep(model, task, [1e-3, 1e-2], metric="kl_div", candidates=4, bands=True)
    stages = {engine.edge_test_stages(model.graph_shape)[e["edge"]] for e in results[0].log}
    assert stages == set(range(2 * L + 1))  # every stage is tested
    # (band 0's evaluator, compiled by the first sweep, is not traced again)
    assert dict(_acdc.TRACE_COUNTS) == {("suffix", s, (4, n_edges)): 1 for s in range(2, 2 * L + 1)}


@pytest.mark.unchecked  # the error users get
def test_bands_refused_with_post_norms():
    model, task = make_task(FAMILY_CONFIGS["gemma2-like"])
    with pytest.raises(ValueError, match="bands=True needs a model without post-attention norms"):
        jacdc.acdc(model, task, 1e-3, metric="kl_div", bands=True)
    auto = engine.Evaluator(model, task, None, "kl_div", 4, bands="auto")
    assert not auto.bands


@pytest.mark.parametrize("layers, bands", [("scan", False), ("scan", True), ("unrolled", False)])
def test_evaluators_compile_without_ynn_fusions_on_cpu(layers, bands, monkeypatch):
    # XLA:CPU's YNNPACK fusions made the evaluators about twice as slow (jacdc/_xla.py); the
    # check below must see them when they are on, or it would prove nothing.
    import jax

    from jacdc import _xla

    if jax.default_backend() != "cpu":
        pytest.skip("the YNNPACK fusions are an XLA:CPU feature")
    model, task = make_task(CONFIGS["gpt2-like"], key=7, batch=64, seq=6)
    corrupted = jacdc.ablation_sources(model, task, False)
    ev = engine.Evaluator(model, task, corrupted, "kl_div", 2, layers=layers, bands=bands)
    assert "__ynn_fusion" not in ev.lower(3).compile().as_text()
    monkeypatch.setenv("JACDC_CPU_YNN", "1")
    fn, args = ev.arguments(3)  # with bands: the tail's evaluator (`evaluate_suffix`)
    with_ynn = _xla.backend_jit(fn.__wrapped__)
    lowered = with_ynn.lower(*args)
    lowered = getattr(lowered, "lowered", lowered)  # Equinox wraps JAX's `Lowered`
    assert "__ynn_fusion" in lowered.compile().as_text()
