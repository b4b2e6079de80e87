import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc import _eap
from jacdc.models import Transformer, TransformerConfig
from jacdc.tasks import AbstractMetric, Task


CFG = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6)


class LogitMetric(AbstractMetric):
    """Minus the mean logit of one token: smooth, with a non-zero gradient at the clean model
    (KL has a zero gradient there)."""

    token: int = eqx.field(static=True)

    def per_example(self, logits):
        return -logits[:, :, self.token].mean(-1)


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
        metrics={"logit": LogitMetric(3)},
    )
    return model, task


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


def _some_edges(graph, per_field=3, seed=0):
    rng = np.random.default_rng(seed)
    chosen = []
    for field in ("q", "k", "v", "mlp", "out", "direct"):
        ids = [i for i, e in enumerate(graph.edges) if e.field == field]
        chosen += rng.choice(ids, size=min(per_field, len(ids)), replace=False).tolist()
    return chosen


@pytest.mark.parametrize("zero_ablation", [False, True])
def test_eap_equals_finite_differences(tiny, zero_ablation):
    model, task = tiny
    graph = jacdc.graph_of(model.graph_shape)
    scores = jacdc.eap_scores(model, task, metric="logit", zero_ablation=zero_ablation)
    assert scores.shape == (len(graph),)
    corrupted = jacdc.ablation_sources(model, task, zero_ablation)
    ids = _some_edges(graph)
    eps = 1e-2
    ones = np.ones(len(graph), np.float32)
    masks = []
    for i in ids:
        for sign in (1, -1):
            vec = ones.copy()
            vec[i] += sign * eps
            masks.append(vec)
    batch = graph.from_vector(jnp.asarray(np.stack(masks)))
    values = jax.vmap(lambda m: jacdc.metric_of_mask(model, task, m, corrupted, "logit"))(batch)
    values = np.asarray(values, np.float64).reshape(len(ids), 2)
    fd = (values[:, 0] - values[:, 1]) / (2 * eps)
    scale = np.abs(scores).max()
    assert scale > 1e-3  # the test means something
    np.testing.assert_allclose(scores[ids], fd, atol=2e-3 * scale, rtol=1e-2)


def test_eap_ig_single_step_is_eap(tiny):
    model, task = tiny
    eap = jacdc.eap_scores(model, task, metric="logit")
    ig1 = jacdc.eap_ig_scores(model, task, metric="logit", steps=1)
    np.testing.assert_array_equal(eap, ig1)


def test_eap_ig_completeness(tiny):
    model, task = tiny
    shape = model.graph_shape
    corrupted = jacdc.ablation_sources(model, task, False)
    full = float(jacdc.metric_of_mask(model, task, jacdc.EdgeMask.full(shape), corrupted, "logit"))
    empty = float(
        jacdc.metric_of_mask(model, task, jacdc.EdgeMask.full(shape, 0.0), corrupted, "logit")
    )
    target = full - empty
    assert abs(target) > 0.05
    ig16 = jacdc.eap_ig_scores(model, task, metric="logit", steps=16)
    # EAP-IG with 8 steps, as 16 points (each of the 8 twice) so that it shares the compilation.
    ig8 = _eap._scores(model, task, "logit", False, np.repeat(np.arange(1, 9) / 8, 2), None)
    totals = {8: ig8.sum(), 16: ig16.sum()}
    totals[1] = jacdc.eap_scores(model, task, metric="logit").sum()
    errors = {m: abs(t - target) for m, t in totals.items()}
    # The right Riemann sum converges like 1/m ...
    assert errors[16] < errors[8] < errors[1]
    assert errors[8] / errors[16] == pytest.approx(2.0, rel=0.2)
    assert errors[16] < 0.1 * abs(target)
    # ... to the completeness limit: Richardson extrapolation removes the 1/m term.
    assert abs(2 * totals[16] - totals[8] - target) < 0.005 * abs(target)


def test_circuit_from_scores():
    scores = np.array([0.5, -2.0, 0.1, 1.0, -0.1])
    assert jacdc.circuit_from_scores(scores, top_k=2).tolist() == [False, True, False, True, False]
    assert jacdc.circuit_from_scores(scores, top_k=2, absolute=False).tolist() == [
        False,
        True,
        False,
        False,
        True,
    ]
    assert jacdc.circuit_from_scores(scores, threshold=0.3).tolist() == [
        True,
        True,
        False,
        True,
        False,
    ]
    assert jacdc.circuit_from_scores(scores, top_k=0).sum() == 0
    with pytest.raises(ValueError, match="exactly one"):
        jacdc.circuit_from_scores(scores)
    with pytest.raises(ValueError, match="top_k"):
        jacdc.circuit_from_scores(scores, top_k=9)


def test_bad_arguments(tiny):
    model, task = tiny
    with pytest.raises(ValueError, match="steps"):
        jacdc.eap_ig_scores(model, task, metric="logit", steps=0)
    with pytest.raises(ValueError, match="Unknown metric"):
        jacdc.eap_scores(model, task, metric="nope")


# ---- faithfulness (MIB) -------------------------------------------------------------------


def test_cpr_cmd_known_values():
    assert jacdc.cpr_cmd([0, 1], [0, 1]) == pytest.approx((0.5, 0.5))
    assert jacdc.cpr_cmd([0, 0.5, 1], [1, 1, 1]) == pytest.approx((1.0, 0.0))
    # f overshoots: CMD counts |1 - f| on both sides.
    assert jacdc.cpr_cmd([0, 0.5, 1], [0, 2, 1]) == pytest.approx((1.25, 0.75))
    with pytest.raises(ValueError, match="increasing"):
        jacdc.cpr_cmd([0, 0, 1], [0, 1, 1])


def test_faithfulness_curve(tiny):
    model, task = tiny
    graph = jacdc.graph_of(model.graph_shape)
    scores = np.abs(jacdc.eap_scores(model, task, metric="logit"))
    curve = jacdc.faithfulness_curve(model, task, scores, "logit", False, [0.0, 0.5, 1.0])
    # Endpoints: the empty circuit has f = 0 and the full one f = 1, by definition.
    assert curve.f[0] == pytest.approx(0.0, abs=1e-6)
    assert curve.f[-1] == pytest.approx(1.0, abs=1e-6)
    # The middle point, computed by hand.
    k = round(0.5 * len(graph))
    assert curve.ks.tolist() == [0, k, len(graph)]
    present = jacdc.circuit_from_scores(scores, top_k=k)
    corrupted = jacdc.ablation_sources(model, task, False)
    m_k = float(jacdc.metric_of_mask(model, task, graph.from_vector(present), corrupted, "logit"))
    f_half = (m_k - curve.empty) / (curve.full - curve.empty)
    assert curve.f[1] == pytest.approx(f_half, rel=1e-4, abs=1e-5)
    assert curve.cpr == pytest.approx(0.25 * (0 + f_half) + 0.25 * (f_half + 1), rel=1e-4)
    cmd = 0.25 * (1 + abs(1 - f_half)) + 0.25 * abs(1 - f_half)
    assert curve.cmd == pytest.approx(cmd, rel=1e-4)
    with pytest.raises(ValueError, match="scores"):
        jacdc.faithfulness_curve(model, task, scores[:3], "logit")
    with pytest.raises(ValueError, match="fractions"):
        jacdc.faithfulness_curve(model, task, scores, "logit", False, [0.5, 2.0])
