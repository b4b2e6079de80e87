"""Mean ablation: every algorithm's `ablation=` setting, against hand-computed means."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc.tasks import Task, kl_metric


@pytest.fixture(scope="module")
def toy(make_lm_model):
    model = make_lm_model(seed=3, n_layers=1, d_vocab=23, n_ctx=12)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 23, (5, 7)).astype(np.int32)
    corrupted = rng.integers(0, 23, (5, 7)).astype(np.int32)
    lengths = np.array([7, 4, 6, 7, 3])
    pos = jnp.arange(7)
    task = Task(
        clean=jnp.asarray(clean),
        corrupted=jnp.asarray(corrupted),
        corrupted_positions=None,
        logit_positions=pos,
        metrics={"kl_div": kl_metric(model, clean, pos)},
        lengths=jnp.asarray(lengths),
    )
    return model, task, clean, lengths


def _hand_mean(model, tokens, lengths, seq, over_positions):
    """The reference mean with NumPy loops: each row's unpadded positions only."""
    from jacdc.models import clean_run

    _, src = clean_run(model, jnp.asarray(tokens))
    resid = np.asarray(src.resid)  # (n, src, seq, d)
    n_src, d = resid.shape[1], resid.shape[3]
    if over_positions:
        parts = [resid[i, :, t] for i in range(len(tokens)) for t in range(lengths[i])]
        return np.broadcast_to(np.mean(parts, axis=0)[:, None, :], (n_src, seq, d))
    out = np.zeros((n_src, seq, d))
    for t in range(seq):
        rows = [resid[i, :, t] for i in range(len(tokens)) if t < lengths[i]]
        out[:, t] = np.mean(rows, axis=0)
    return out


def _hand_logits(model, resid_sum):
    """The output head applied by hand to `sum of sources + every b_O`."""
    x = resid_sum + sum(np.asarray(b.b_o) for b in model.blocks)
    ln = model.ln_final
    x = x - x.mean(-1, keepdims=True)
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + ln.eps) * np.asarray(ln.w) + np.asarray(ln.b)
    return x @ np.asarray(model.w_u) + np.asarray(model.b_u)


@pytest.mark.parametrize("kind", ["mean", "mean-positions"])
def test_empty_circuit_reads_the_hand_computed_mean(toy, kind):
    model, task, clean, lengths = toy
    graph = jacdc.graph_of(model.graph_shape)
    sources = jacdc.ablation_sources(model, task, ablation=kind)
    mean = _hand_mean(model, clean, lengths, task.seq, kind == "mean-positions")
    np.testing.assert_allclose(np.asarray(sources.resid[0]), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sources.resid[4]), mean, rtol=1e-5, atol=1e-5)
    empty = graph.from_vector(np.zeros(len(graph), np.float32))
    logits = jacdc.masked_logits(model, task, empty, sources)
    want = _hand_logits(model, mean.sum(0))
    np.testing.assert_allclose(np.asarray(logits[2]), want, rtol=1e-4, atol=1e-4)
    # The metric of the empty circuit is the KL of the mean run against the full model.
    kl = float(jacdc.metric_of_mask(model, task, empty, sources, "kl_div"))
    full_lp = np.asarray(task.metrics["kl_div"].clean_logprobs)
    lp = want - np.log(np.exp(want - want.max(-1, keepdims=True)).sum(-1, keepdims=True))
    lp = lp - want.max(-1, keepdims=True)
    hand = np.mean((np.exp(full_lp) * (full_lp - lp[None])).sum(-1))
    np.testing.assert_allclose(kl, hand, rtol=1e-4, atol=1e-5)
    # Every edge present: the full model (KL 0).
    full = graph.from_vector(np.ones(len(graph), np.float32))
    assert abs(float(jacdc.metric_of_mask(model, task, full, sources, "kl_div"))) < 1e-5


def test_padding_never_enters_the_mean(toy):
    model, task, clean, lengths = toy
    other = clean.copy()
    for i, n in enumerate(lengths):
        other[i, n:] = (other[i, n:] + 5) % 23  # change only the padding
    for kind in ("mean", "mean-positions"):
        a = jacdc.ablation_sources(model, task, ablation=jacdc.Ablation(kind, clean, lengths))
        b = jacdc.ablation_sources(model, task, ablation=jacdc.Ablation(kind, other, lengths))
        np.testing.assert_allclose(np.asarray(a.resid), np.asarray(b.resid), atol=1e-6)
        # ...while the same rows read as unpadded give another mean.
        c = jacdc.ablation_sources(model, task, ablation=jacdc.Ablation(kind, other))
        assert not np.allclose(np.asarray(a.resid), np.asarray(c.resid), atol=1e-4)


def test_other_reference_and_short_reference(toy):
    model, task, clean, lengths = toy
    ref = np.array([[1, 2, 3], [4, 5, 6]], np.int32)  # shorter than the task's 7 positions
    src = jacdc.ablation_sources(model, task, ablation=jacdc.Ablation("mean", ref))
    per_pos = _hand_mean(model, ref, [3, 3], 3, False)
    overall = _hand_mean(model, ref, [3, 3], 1, True)
    got = np.asarray(src.resid[0])
    np.testing.assert_allclose(got[:, :3], per_pos, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 3:], np.repeat(overall, 4, axis=1), rtol=1e-5, atol=1e-5)


def test_old_flag_and_bad_settings(toy):
    model, task, _, _ = toy
    a = jacdc.ablation_sources(model, task, True)
    b = jacdc.ablation_sources(model, task, ablation="zero")
    np.testing.assert_array_equal(np.asarray(a.resid), np.asarray(b.resid))
    with pytest.raises(ValueError, match="contradicts"):
        jacdc.ablation_sources(model, task, True, ablation="mean")
    with pytest.raises(ValueError, match="Unknown ablation"):
        jacdc.ablation_sources(model, task, ablation="median")
    with pytest.raises(ValueError, match="mean ablation only"):
        jacdc.Ablation("zero", reference=np.zeros((2, 3), np.int32))


def test_every_algorithm_takes_mean_ablation(toy):
    model, task, _, _ = toy
    graph = jacdc.graph_of(model.graph_shape)
    fast = jacdc.acdc(model, task, 0.05, metric="kl_div", ablation="mean")
    ref = jacdc.acdc(model, task, 0.05, metric="kl_div", ablation="mean", engine="reference")
    np.testing.assert_array_equal(fast.present, ref.present)
    assert fast.ablation == "mean" and not fast.zero_ablation
    # The circuit's metric is measured against the mean run.
    src = jacdc.ablation_sources(model, task, ablation="mean")
    got = float(jacdc.metric_of_mask(model, task, graph.from_vector(fast.present * 1.0), src,
                                     "kl_div"))  # fmt: skip
    assert abs(got - fast.metric) < 1e-4
    # EAP towards the mean run differs from EAP towards the corrupted run.
    s_mean = jacdc.eap_ig_scores(model, task, metric="kl_div", steps=2, ablation="mean")
    s_corr = jacdc.eap_ig_scores(model, task, metric="kl_div", steps=2)
    s_pre = jacdc.eap_ig_scores(model, task, metric="kl_div", steps=2, corrupted=src)
    np.testing.assert_allclose(s_mean, s_pre, rtol=1e-5, atol=1e-7)
    assert not np.allclose(s_mean, s_corr)
    sp = jacdc.subnetwork_probing(
        model, task, 1.0, key=jr.key(0), metric="kl_div", n_steps=3, ablation="mean-positions"
    )
    assert sp.present.shape == (len(graph),)
    ep = jacdc.edge_pruning(model, task, 1.0, key=jr.key(0), metric="kl_div", n_steps=3,
                            ablation="mean")  # fmt: skip
    ep_corr = jacdc.edge_pruning(model, task, 1.0, key=jr.key(0), metric="kl_div", n_steps=3)
    assert not np.allclose(ep.metric, ep_corr.metric)
    h_mean = jacdc.hisp(model, task, metric="kl_div", ablation="mean")
    h_zero = jacdc.hisp(model, task, metric="kl_div")
    assert not np.allclose(h_mean.raw_scores, h_zero.raw_scores)
    curve = jacdc.faithfulness_curve(model, task, np.abs(s_mean), "kl_div", ablation="mean",
                                     fractions=(0.0, 0.5, 1.0))  # fmt: skip
    assert abs(curve.f[-1] - 1.0) < 1e-4 and abs(curve.f[0]) < 1e-6
