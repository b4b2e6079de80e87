"""tracr: loader parity with tracr's own forward, tasks, canonical circuits and ground truth.

tracr compiles once per session (`fixtures_tracr.py`); all of this file runs in well under a
minute (`pytest tests/test_tracr.py --durations=0`).
"""

import dataclasses
import functools
import itertools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures_tracr import TRACR_TASKS

import jacdc
from jacdc.models import (
    TracrCompileError,
    clean_run,
    compile_tracr,
    corrupted_sources,
    load_tracr_model,
    program_ground_truth,
    residuals_from_sources,
    zero_ablation_sources,
)
from jacdc.models._tracr import (
    merge_heads_bias,
    merge_heads_in,
    merge_heads_out,
    split_heads_bias,
    split_heads_in,
    split_heads_out,
)
from jacdc.tasks import available_tasks, get_task, load_task
from jacdc.tasks._tracr import (
    EXPECTED_INERT,
    PROPORTION_CANONICAL,
    shuffled_positions,
    tracr_assembled,
    tracr_model,
)


# ---- helpers -----------------------------------------------------------------------------------


@eqx.filter_jit
def _masked_logits(model, tokens, masks, sources):
    """Logits `(mask, batch, seq, out)` of a batch under a stack of masks."""
    one = jax.vmap(lambda t, m, c: model(t, m, c)[0], in_axes=(0, None, 0))
    return jax.vmap(lambda m: one(tokens, m, sources))(masks)


def _masks(graph, vectors):
    """A stack of [`jacdc.EdgeMask`][]s from per-edge rows `(n, edge)`, built with NumPy (eager
    JAX ops compile once per shape, which adds up over five models)."""
    vectors = np.asarray(vectors, np.float32)
    fields = {
        name: np.zeros((len(vectors),) + valid.shape, np.float32)
        for name, valid in graph.validity().items()
    }
    for i, edge in enumerate(graph.edges):
        fields[edge.field][(slice(None),) + edge.index] = vectors[:, i]
    return jacdc.EdgeMask(**{name: jnp.asarray(x) for name, x in fields.items()})


def _all_tokens(bundle):
    return jnp.asarray(np.concatenate([bundle.val.clean, bundle.test.clean]))


def _short_inputs(name, md):
    """Program inputs of length 2 (parity beyond the task data's length)."""
    vocab = md.vocab
    if name == "tracr-sort-unique":  # sorting needs unique keys
        return [list(p) for p in itertools.permutations(vocab, 2)]
    return [list(p) for p in itertools.product(vocab, repeat=2)]


# Programs whose parity is also checked on inputs of another length (each extra length costs
# two compilations; these two cover a 4-layer categorical and a 2-head numerical program).
SHORT_INPUT_PARITY = ("tracr-reverse", "tracr-pair-balance")


@functools.cache
def _jitted_tracr(name, batch):
    """tracr's own forward (its Haiku `apply`), jitted once per program: eager Haiku compiles
    every primitive per shape, which would dominate this file's run time. Also returns a copy of
    the assembled model whose `apply` (encoding, forward, decoding: the `.decoded` path) runs the
    jitted forward on its one sequence repeated `batch` times, reusing the compiled batch shape
    (`apply` reads item 0 only)."""
    assembled, _ = tracr_assembled(name)
    forward = jax.jit(assembled.forward)

    def repeated(params, tokens):
        return forward(params, np.repeat(np.asarray(tokens), batch, axis=0))

    return forward, dataclasses.replace(assembled, forward=repeated)


def _tracr_forward(name, ids):
    """tracr's forward on a batch of ids: residuals `(2L, batch, seq, d)` and its unembedded
    output (argmax ids or numerical values)."""
    forward, assembled = _jitted_tracr(name, 1)
    out = forward(assembled.params, jnp.asarray(ids))
    return np.stack(out.transformer_output.residuals), np.asarray(out.unembedded_output)


@functools.cache
def _ground_truth_runs(name):
    """Zero-ablation logits of the task data (val + test) under the masks
    `[all edges, ground truth, ground truth minus edge 0, minus edge 1, ...]`, one compile."""
    bundle = load_task(name)
    model = bundle.model
    graph = jacdc.graph_of(model.graph_shape)
    gt = bundle.info["ground_truth"]
    tokens = _all_tokens(bundle)
    zero = zero_ablation_sources(model, *tokens.shape)
    vectors = np.zeros((len(gt) + 2, len(graph)), np.float32)
    vectors[0] = 1.0
    vectors[1:, [graph.edge_id(edge) for edge in gt]] = 1.0
    for i, edge in enumerate(gt):
        vectors[i + 2, graph.edge_id(edge)] = 0.0
    logits = _masked_logits(model, tokens, _masks(graph, vectors), zero)
    return np.asarray(logits)


# ---- weight layout -----------------------------------------------------------------------------


def test_layout_round_trips():
    rng = np.random.default_rng(0)
    w_in = rng.normal(size=(7, 3 * 4))
    split = split_heads_in(w_in, 3)
    assert split.shape == (3, 7, 4)
    np.testing.assert_array_equal(split[1], w_in[:, 4:8])  # heads are concatenated on `out`
    np.testing.assert_array_equal(merge_heads_in(split), w_in)
    w_out = rng.normal(size=(3 * 4, 7))
    split = split_heads_out(w_out, 3)
    assert split.shape == (3, 4, 7)
    np.testing.assert_array_equal(split[2], w_out[8:12])
    np.testing.assert_array_equal(merge_heads_out(split), w_out)
    b = rng.normal(size=(3 * 4,))
    np.testing.assert_array_equal(split_heads_bias(b, 3)[1], b[4:8])
    np.testing.assert_array_equal(merge_heads_bias(split_heads_bias(b, 3)), b)


# ---- parity with tracr ---------------------------------------------------------------------------


def test_parity_with_tracr(tracr_bundle):
    """Residuals after every sublayer and decoded outputs equal tracr's own forward, on the task
    data (both splits) and, for `SHORT_INPUT_PARITY`, on every input of length 2."""
    name = tracr_bundle.name
    model, md = tracr_model(name)
    groups = [np.asarray(tracr_bundle.val.clean), np.asarray(tracr_bundle.test.clean)]
    _, assembled = _jitted_tracr(name, len(groups[0]))
    if name in SHORT_INPUT_PARITY:
        groups.append(md.encode_batch(_short_inputs(name, md)))
    results = []
    for ids in groups:
        logits, sources = clean_run(model, jnp.asarray(ids))
        ours = np.asarray(residuals_from_sources(model, sources))
        theirs, unembedded = _tracr_forward(name, ids)
        want_shape = (2 * model.cfg.n_layers,) + ids.shape + (model.cfg.d_model,)
        assert ours.shape == theirs.shape == want_shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
        decoded = md.decode(logits)
        if md.numerical:
            np.testing.assert_allclose(np.asarray(logits)[..., 0], unembedded, atol=1e-5)
            np.testing.assert_allclose([d[1:] for d in decoded], unembedded[:, 1:], atol=1e-5)
        else:
            for b in range(len(ids)):
                want = assembled.output_encoder.decode(unembedded[b].tolist())
                assert decoded[b] == [md.bos_token] + want[1:]
        results.append((ours, decoded))
    # tracr's `apply` (the user-facing path: encoding, forward, `.decoded`) on some data inputs.
    token_of = {i: t for t, i in md.input_encoding.items()}
    ours, decoded = results[0]
    for b in range(3):
        out = assembled.apply([token_of[int(i)] for i in groups[0][b]])
        resid = np.stack([r[0] for r in out.residuals])
        np.testing.assert_allclose(ours[:, b], resid, atol=1e-5, rtol=0)
        assert decoded[b][0] == out.decoded[0] == md.bos_token
        if md.numerical:
            np.testing.assert_allclose(decoded[b][1:], out.decoded[1:], atol=1e-5)
        else:
            assert decoded[b] == out.decoded


def test_loader_infers_output_label(tracr_compiled):
    for name in ("tracr-reverse", "tracr-proportion"):
        assembled, label = tracr_assembled(name)
        model, md = tracr_model(name)
        inferred, md2 = load_tracr_model(assembled)
        assert md2.output_labels == md.output_labels
        assert md2.program_name == label
        np.testing.assert_array_equal(np.asarray(inferred.w_u), np.asarray(model.w_u))
    _, label = tracr_assembled("tracr-reverse")
    _, md = tracr_model("tracr-reverse")
    assert md.output_labels == (f"{label}:1", f"{label}:2", f"{label}:3")
    assert md.output_decoding == {0: 1, 1: 2, 2: 3}
    assert md.input_encoding == {1: 0, 2: 1, 3: 2, "BOS": 3, "compiler_pad": 4}
    assert (md.bos_id, md.pad_id, md.max_seq_len, md.numerical) == (3, 4, 5, False)
    model, md = tracr_model("tracr-proportion")
    assert md.numerical and model.cfg.vocab_out == 1
    assert model.cfg.n_ctx == 6 and model.cfg.d_model == 14 and model.cfg.d_mlp == 1


def test_config_matches_reference(tracr_compiled):
    model, _ = tracr_model("tracr-reverse")
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_mlp, cfg.d_head) == (4, 1, 41, 30, 12)
    assert cfg.positional == "separate" and cfg.normalization == "none" and not cfg.causal
    assert jacdc.graph_of(cfg.graph_shape).shape.n_edges() == 106
    model, _ = tracr_model("tracr-proportion")
    assert jacdc.graph_of(model.cfg.graph_shape).shape.n_edges() == 38
    model, _ = tracr_model("tracr-pair-balance")
    assert model.cfg.n_heads == 2  # exercises the head split


# ---- canonical circuits and ground truth -------------------------------------------------------


def test_canonical_counts(tracr_reverse, tracr_proportion):
    for bundle, count in ((tracr_reverse, 15), (tracr_proportion, 10)):
        canonical = bundle.canonical_circuit()
        assert len(canonical) == len(set(canonical)) == count
        graph = jacdc.graph_of(bundle.model.graph_shape)
        ids = [graph.edge_id(name) for name in canonical]  # raises on an unknown name
        assert len(set(ids)) == count
    # The test helper `_masks` builds the same mask as `Graph.mask_from_edges`.
    graph = jacdc.graph_of(tracr_reverse.model.graph_shape)
    vector = np.zeros((1, len(graph)), np.float32)
    vector[0, [graph.edge_id(name) for name in tracr_reverse.canonical]] = 1.0
    ours, theirs = _masks(graph, vector), graph.mask_from_edges(tracr_reverse.canonical)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(y))
    direct = [n for n in tracr_reverse.canonical if ".attn.hook_" in n.split(" <- ")[0]]
    assert len(direct) == 4  # L3 q, k, v and L0 v


def test_ground_truth_vs_canonical(tracr_reverse, tracr_proportion):
    gt = set(program_ground_truth(*tracr_model("tracr-proportion")))
    assert gt == set(tracr_proportion.canonical)
    gt = set(program_ground_truth(*tracr_model("tracr-reverse")))
    canonical = set(tracr_reverse.canonical)
    assert canonical <= gt
    assert gt - canonical == {
        "blocks.3.hook_q_input[0] <- hook_embed",
        "blocks.3.hook_k_input[0] <- hook_embed",
        "blocks.0.hook_q_input[0] <- hook_embed",
        "blocks.0.hook_k_input[0] <- hook_embed",
        "blocks.0.attn.hook_q[0] <- blocks.0.hook_q_input[0]",
        "blocks.0.attn.hook_k[0] <- blocks.0.hook_k_input[0]",
    }
    assert tracr_reverse.info["ground_truth"] == program_ground_truth(*tracr_model("tracr-reverse"))


def test_ground_truth_is_sufficient(tracr_bundle):
    """Zero-ablating every edge outside the ground truth changes no output."""
    _, md = tracr_model(tracr_bundle.name)
    logits = _ground_truth_runs(tracr_bundle.name)
    full, circuit = logits[0], logits[1]
    np.testing.assert_allclose(circuit, full, atol=1e-5, rtol=0)
    assert md.decode(circuit) == md.decode(full)
    pos = np.asarray(tracr_bundle.val.logit_positions)
    np.testing.assert_allclose(circuit[:, pos], full[:, pos], atol=1e-5, rtol=0)


def test_ground_truth_is_minimal(tracr_bundle):
    """Removing any single ground-truth edge changes some output at the metric positions by
    more than 1e-4, except the edges listed (with causes) in `EXPECTED_INERT`."""
    gt = tracr_bundle.info["ground_truth"]
    logits = _ground_truth_runs(tracr_bundle.name)
    pos = np.asarray(tracr_bundle.val.logit_positions)
    change = np.abs(logits[2:] - logits[1:2])[:, :, pos].max(axis=(1, 2, 3))
    inert = {edge for edge, c in zip(gt, change, strict=True) if c <= 1e-4}
    assert inert == set(EXPECTED_INERT[tracr_bundle.name])
    effective = [c for edge, c in zip(gt, change) if edge not in inert]
    assert min(effective) > 1e-2  # a clear gap between inert and effective edges


# ---- tasks -------------------------------------------------------------------------------------


def test_registered(tracr_compiled):
    assert set(TRACR_TASKS) <= set(available_tasks())
    assert get_task("tracr-reverse").metrics == ("l2", "kl_div")
    assert get_task("tracr-proportion").metrics == ("l2",)
    assert get_task("tracr-proportion-bos").metrics == ("l2",)
    for name in TRACR_TASKS:
        assert get_task(name).default_metric == "l2" and not get_task(name).needs_weights


EXPECTED_SHAPES = {  # (val batch, test batch, seq, metric positions, output dims)
    "tracr-reverse": (6, 6, 4, [1, 2, 3], 3),
    "tracr-proportion-bos": (50, 50, 5, [1, 2, 3, 4], 1),
    "tracr-sort-unique": (60, 60, 5, [1, 2, 3, 4], 5),
    "tracr-hist": (40, 40, 5, [1, 2, 3, 4], 5),
    "tracr-pair-balance": (16, 16, 6, [1, 2, 3, 4, 5], 1),
}


def test_task_shapes_and_metrics(tracr_bundle):
    b = tracr_bundle
    n_val, n_test, seq, pos, out = EXPECTED_SHAPES[b.name]
    _, md = tracr_model(b.name)
    assert b.val.clean.shape == (n_val, seq) and b.test.clean.shape == (n_test, seq)
    assert b.model.cfg.vocab_out == out
    for split in (b.val, b.test):
        assert split.corrupted.shape == split.clean.shape
        assert split.corrupted_positions is None  # positions="none", the default
        np.testing.assert_array_equal(split.logit_positions, pos)
        md.check_ids(split.clean)
        md.check_ids(split.corrupted)
        # The corrupted rows are a permutation of the clean rows (within the split).
        assert sorted(map(tuple, np.asarray(split.corrupted).tolist())) == sorted(
            map(tuple, np.asarray(split.clean).tolist())
        )
    assert b.info["positions"] == "none"
    for split in (b.val, b.test):
        logits, _ = clean_run(b.model, split.clean)
        for metric in split.metrics.values():
            assert float(metric(logits[:, split.logit_positions])) == pytest.approx(0.0, abs=1e-6)
        assert set(split.metrics) == set(get_task(b.name).metrics)
        l2 = split.metrics["l2"]
        np.testing.assert_array_equal(l2.dims, np.arange(out))
    assert b.default_metric == "l2"
    assert len(b.canonical_circuit()) > 0
    json.dumps(b.info)  # reports store it
    if b.name not in ("tracr-reverse", "tracr-proportion", "tracr-proportion-bos"):
        assert b.canonical == b.info["ground_truth"]
    if b.name == "tracr-reverse":
        np.testing.assert_array_equal(b.val.clean, b.test.clean)  # validation = test
        assert sorted(map(tuple, np.asarray(b.val.clean)[:, 1:].tolist())) == sorted(
            itertools.permutations([0, 1, 2])
        )
        assert (np.asarray(b.val.clean)[:, 0] == 3).all()  # BOS id 3, as in the original
    else:
        both = np.concatenate([b.val.clean, b.test.clean])
        assert len({tuple(r) for r in both.tolist()}) == n_val + n_test  # distinct inputs


def test_proportion_original_ids(tracr_compiled):
    """The original's proportion data: ids 0-3 (tracr's BOS, pad, w, x), no BOS in front."""
    b = load_task("tracr-proportion")  # the default: the paper's data
    _, md = tracr_model("tracr-proportion")
    assert [md.input_encoding[t] for t in ("BOS", "compiler_pad", "w", "x")] == [0, 1, 2, 3]
    assert b.val.clean.shape == b.test.clean.shape == (50, 4)
    np.testing.assert_array_equal(b.val.logit_positions, [1, 2, 3])
    ids = np.concatenate([b.val.clean, b.test.clean])
    assert ids.min() == 0 and ids.max() == 3 and len({tuple(r) for r in ids.tolist()}) == 100
    assert b.canonical == list(PROPORTION_CANONICAL)


def test_derangement(tracr_bundle):
    for split in (tracr_bundle.val, tracr_bundle.test):
        clean, corrupted = np.asarray(split.clean), np.asarray(split.corrupted)
        fixed = (clean == corrupted).all(-1)
        if tracr_bundle.name == "tracr-proportion-bos":
            assert fixed.sum() < len(fixed)  # a plain random permutation, as in the original
        else:
            assert not fixed.any()  # no row maps to itself


def test_fixed_seeds(tracr_bundle):
    again = load_task(tracr_bundle.name)
    leaves = lambda b: jax.tree.leaves((b.val, b.test))
    for x, y in zip(leaves(tracr_bundle), leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert again.info == tracr_bundle.info
    other = load_task(tracr_bundle.name, seed=1)
    if tracr_bundle.name != "tracr-reverse":  # reverse's data is all 6 permutations
        assert not np.array_equal(other.val.clean, tracr_bundle.val.clean)


def test_corrupted_ablation_invariant(tracr_reverse):
    """All edges present = clean model; none present = the corrupted run (reference §2.5), with
    the shuffled positional embedding."""
    b = tracr_reverse
    model, graph = b.model, jacdc.graph_of(b.model.graph_shape)
    cat = lambda f: jnp.asarray(np.concatenate([f(b.val), f(b.test)]))
    tokens, corrupted = cat(lambda t: t.clean), cat(lambda t: t.corrupted)
    positions = jnp.asarray(shuffled_positions(*tokens.shape))  # positions="shuffled"
    sources = corrupted_sources(model, corrupted, positions)
    # As many masks as `_ground_truth_runs` uses, so the compiled function is reused.
    vectors = np.zeros((len(b.info["ground_truth"]) + 2, len(graph)), np.float32)
    vectors[0] = 1.0
    logits = _masked_logits(model, tokens, _masks(graph, vectors), sources)
    clean, _ = clean_run(model, b.val.clean)  # validation = test for reverse
    corrupt, _ = clean_run(model, corrupted, positions)
    np.testing.assert_allclose(logits[0], np.concatenate([clean, clean]), atol=1e-5)
    np.testing.assert_allclose(logits[1], corrupt, atol=1e-5)
    pos = b.val.logit_positions
    assert float(b.val.metrics["l2"](logits[1][: b.val.batch, pos])) > 0.1


# ---- bad inputs --------------------------------------------------------------------------------


def test_bad_inputs(tracr_compiled):
    _, md = tracr_model("tracr-reverse")
    np.testing.assert_array_equal(md.encode([3, 1]), [3, 2, 0])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        md.encode([1, 4])
    with pytest.raises(ValueError, match="at most 5 tokens"):
        md.encode([1, 2, 3, 1, 2, 3])
    with pytest.raises(ValueError, match="holds the pad token"):
        md.encode([1, "compiler_pad"])
    with pytest.raises(ValueError, match="adds BOS itself"):
        md.encode(["BOS", 1])
    with pytest.raises(ValueError, match="same length"):
        md.encode_batch([[1], [1, 2]])
    with pytest.raises(ValueError, match="Pad id 4"):
        md.check_ids(np.array([[3, 0, 4]]))
    with pytest.raises(ValueError, match="start with BOS"):
        md.check_ids(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="only at position 0"):
        md.check_ids(np.array([3, 3, 1]))
    with pytest.raises(ValueError, match="6 positions"):
        md.check_ids(np.array([3, 0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"lie in \[0, 5\)"):
        md.check_ids(np.array([3, 7]))
    with pytest.raises(ValueError, match="shape"):
        md.decode(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="AssembledTransformerModel"):
        load_tracr_model(object())


def test_uncompilable_programs():
    from tracr.rasp import rasp

    numeric_keys = rasp.numerical(rasp.Map(lambda x: x, rasp.tokens))
    bad = rasp.Aggregate(rasp.Select(numeric_keys, rasp.tokens, rasp.Comparison.EQ), rasp.tokens)
    with pytest.raises(TracrCompileError, match="Select keys must be categorical"):
        compile_tracr(bad, {1, 2}, 3)
    with pytest.raises(TracrCompileError, match="tokens"):
        compile_tracr(rasp.Map(lambda x: x + 1, rasp.indices), {1, 2}, 3)
    with pytest.raises(ValueError, match="compiler_bos='BOS' is also a vocabulary token"):
        compile_tracr(rasp.tokens, {"BOS", "a"}, 3)
    with pytest.raises(ValueError, match="max_seq_len"):
        compile_tracr(rasp.tokens, {1}, 0)
    with pytest.raises(TypeError, match="RASP SOp"):
        compile_tracr("not a program", {1}, 3)
