"""Value-bias folding (TransformerLens's `fold_value_biases`) in the loaders."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from fixtures_lm import numpy_random_model

import jacdc
from jacdc.models import (
    TransformerConfig,
    clean_run,
    fold_value_biases,
    from_transformer_lens_state_dict,
    load_gpt2,
    value_bias_folding,
)
from jacdc.tasks import Task, kl_metric


CFG = TransformerConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, d_mlp=16, d_vocab=23, n_ctx=8)


@pytest.fixture(scope="module")
def pair():
    raw = numpy_random_model(CFG, seed=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, CFG.d_vocab, (6, 8)), jnp.int32)
    pos = jnp.array([5, 7])
    task = Task(
        clean=tokens,
        corrupted=tokens[::-1],
        corrupted_positions=None,
        logit_positions=pos,
        metrics={"kl_div": kl_metric(raw, tokens, pos)},
    )
    return raw, fold_value_biases(raw), task


def _masks(n_edges, n=24, seed=0):
    rng = np.random.default_rng(seed)
    keep = rng.uniform(0.2, 0.9, (n, 1))  # sparse to dense circuits
    return (rng.uniform(size=(n, n_edges)) < keep).astype(np.float32)


def test_weights_are_folded_and_recorded(pair):
    raw, folded, _ = pair
    assert not raw.cfg.fold_value_biases and folded.cfg.fold_value_biases
    for r, f in zip(raw.blocks, folded.blocks):
        assert np.abs(np.asarray(r.b_v)).max() > 0.05 and (np.asarray(f.b_v) == 0).all()
        want = np.asarray(r.b_o, np.float64) + np.einsum("he,hed->d", r.b_v, r.w_o)
        np.testing.assert_allclose(f.b_o, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(f.w_v, r.w_v)
    assert dataclasses.asdict(folded.cfg)["fold_value_biases"] is True  # result.json "model"
    again = fold_value_biases(folded)
    for a, f in zip(again.blocks, folded.blocks):
        np.testing.assert_array_equal(a.b_o, f.b_o)


def test_identical_logits(pair):
    raw, folded, task = pair
    a, _ = clean_run(raw, task.clean)
    b, _ = clean_run(folded, task.clean)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)


def test_identical_corrupted_ablation_metrics_for_every_mask(pair):
    raw, folded, task = pair
    graph = jacdc.graph_of(raw.graph_shape)
    vectors = _masks(len(graph))
    values = []
    for model in (raw, folded):
        corrupted = jacdc.ablation_sources(model, task, False)
        values.append(
            [
                float(jacdc.metric_of_mask(model, task, graph.from_vector(v), corrupted, "kl_div"))
                for v in vectors
            ]
        )
    np.testing.assert_allclose(values[0], values[1], rtol=1e-4, atol=1e-6)
    assert np.ptp(values[0]) > 0.01  # the masks do different things


def test_different_zero_ablation_metrics(pair):
    # Zero ablation removes a zeroed head's b_V W_O from the raw model but not from the folded
    # one (it sits in b_O, which no node owns): the original's numbers need the folded weights.
    raw, folded, task = pair
    graph = jacdc.graph_of(raw.graph_shape)
    vectors = _masks(len(graph))
    vectors[0] = 1.0  # the full circuit: both are the clean model
    values = []
    for model in (raw, folded):
        zeros = jacdc.ablation_sources(model, task, True)
        values.append(
            np.array(
                [
                    float(jacdc.metric_of_mask(model, task, graph.from_vector(v), zeros, "kl_div"))
                    for v in vectors
                ]
            )
        )
    assert abs(values[0][0]) < 1e-5 and abs(values[1][0]) < 1e-5
    diff = np.abs(values[0][1:] - values[1][1:])
    assert (diff > 1e-4).mean() > 0.9, diff


def test_hisp_v_scores_change_q_k_do_not(pair):
    raw, folded, task = pair
    import equinox as eqx
    from test_hisp import LogitMetric

    task = eqx.tree_at(lambda t: t.metrics, task, {"logit": LogitMetric(3)})
    shape = raw.graph_shape
    a, _ = jacdc.hisp_scores(raw, task, metric="logit")
    b, _ = jacdc.hisp_scores(folded, task, metric="logit")
    names = jacdc.unit_names(shape)
    v = np.array(["hook_v" in n for n in names])
    qk = np.array(["hook_q" in n or "hook_k" in n for n in names])
    np.testing.assert_allclose(a[qk], b[qk], rtol=1e-3, atol=1e-6)
    assert not np.allclose(a[v], b[v], rtol=1e-2)


def _tl_state_dict(model):
    sd = {"embed.W_E": model.w_e, "pos_embed.W_pos": model.w_pos}
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        sd |= {p + "ln1.w": blk.ln1.w, p + "ln1.b": blk.ln1.b, p + "ln2.w": blk.ln2.w}
        sd |= {p + "ln2.b": blk.ln2.b, p + "attn.W_O": blk.w_o, p + "attn.b_O": blk.b_o}
        for x in "QKV":
            sd[p + f"attn.W_{x}"] = getattr(blk, f"w_{x.lower()}")
            sd[p + f"attn.b_{x}"] = getattr(blk, f"b_{x.lower()}")
        sd |= {p + "mlp.W_in": blk.w_in, p + "mlp.b_in": blk.b_in}
        sd |= {p + "mlp.W_out": blk.w_out, p + "mlp.b_out": blk.b_out}
    sd |= {"ln_final.w": model.ln_final.w, "ln_final.b": model.ln_final.b}
    sd |= {"unembed.W_U": model.w_u, "unembed.b_U": model.b_u}
    return {k: np.asarray(v) for k, v in sd.items()}


def test_tl_loader_folds_by_default_and_can_be_switched_off(pair):
    raw, folded, _ = pair
    sd = _tl_state_dict(raw)
    default = from_transformer_lens_state_dict(sd, CFG)
    assert default.cfg.fold_value_biases
    np.testing.assert_array_equal(default.blocks[0].b_o, folded.blocks[0].b_o)
    off = from_transformer_lens_state_dict(sd, CFG, fold_value_biases=False)
    assert not off.cfg.fold_value_biases
    np.testing.assert_array_equal(off.blocks[0].b_v, raw.blocks[0].b_v)
    with value_bias_folding(False):
        assert not from_transformer_lens_state_dict(sd, CFG).cfg.fold_value_biases
    assert from_transformer_lens_state_dict(sd, CFG).cfg.fold_value_biases


def test_gpt2_loader_folds_by_default(tmp_path):
    from test_gpt2 import BASE_CONFIG, _random_hf_tensors, _write_folder

    path = _write_folder(
        tmp_path / "gpt2", BASE_CONFIG, _random_hf_tensors(np.random.default_rng(0))
    )
    folded, raw = load_gpt2(path), load_gpt2(path, fold_value_biases=False)
    assert folded.cfg.fold_value_biases and not raw.cfg.fold_value_biases
    assert (np.asarray(folded.blocks[1].b_v) == 0).all()
    assert np.abs(np.asarray(raw.blocks[1].b_v)).max() > 0
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 50, (2, 16)), jnp.int32)
    np.testing.assert_allclose(
        np.asarray(clean_run(folded, tokens)[0]), np.asarray(clean_run(raw, tokens)[0]), atol=1e-4
    )
