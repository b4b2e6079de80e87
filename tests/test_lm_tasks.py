"""The language-model tasks: prompts with GPT-2's real tokenizer, corruptions, splits, metrics,
canonical circuits, registry and errors. Models are tiny and random (see `fixtures_lm.py`)."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

import jacdc
from jacdc.tasks import (
    circuit_nodes,
    docstring_circuit,
    get_task,
    greater_than_circuit,
    ioi_circuit,
    load_task,
    make_docstring_prompts,
    make_greater_than_prompts,
    make_ioi_prompts,
    make_ioi_task,
    repeated_token_sequences,
)


GPT2 = jacdc.GraphShape(n_layers=12, n_heads=12, has_mlp=True)
ATTN_4L = jacdc.GraphShape(n_layers=4, n_heads=8, has_mlp=False)


# ---- canonical circuits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, shape, n_edges, n_nodes",
    [
        (ioi_circuit, GPT2, 1041, 196),
        (greater_than_circuit, GPT2, 262, 77),
        (docstring_circuit, ATTN_4L, 37, 34),
    ],
)
def test_canonical_circuit_sizes(build, shape, n_edges, n_nodes):
    edges = build()
    graph = jacdc.graph_of(shape)
    assert len(edges) == len(set(edges)) == n_edges
    ids = [graph.edge_id(e) for e in edges]  # every name is a counted edge of the graph
    assert ids == sorted(ids)
    nodes = circuit_nodes(edges)
    assert len(nodes) == n_nodes
    assert not any(n.endswith("hook_mlp_in") for n in nodes)
    # The mask round-trips to the same edge set.
    assert graph.edges_from_mask(graph.mask_from_edges(edges)) == ids


@pytest.mark.parametrize(
    "build, shape, n_nodes",
    [(ioi_circuit, GPT2, 196), (greater_than_circuit, GPT2, 77), (docstring_circuit, ATTN_4L, 34)],
)
def test_canonical_node_counts_match_roc_convention(build, shape, n_nodes):
    roc = pytest.importorskip("jacdc._roc")
    graph = jacdc.graph_of(shape)
    present = np.zeros(len(graph), bool)
    present[[graph.edge_id(e) for e in build()]] = True
    nodes = roc.present_nodes(shape, present)
    assert int(nodes.sum()) == n_nodes
    assert set(np.asarray(roc.node_names(shape))[nodes]) == circuit_nodes(build())


def test_ioi_circuit_details():
    edges = ioi_circuit()
    assert sum("mlp" in e for e in edges) == 780  # derived in the reference
    # Class connections: S-inhibition 7.3 -> name mover 9.9 query; not its key.
    assert "blocks.9.hook_q_input[9] <- blocks.7.attn.hook_result[3]" in edges
    assert "blocks.9.hook_k_input[9] <- blocks.7.attn.hook_result[3]" not in edges
    # Name movers write to the output and to later MLP inputs; heads outside the circuit never
    # appear; the embedding feeds q/k/v of previous-token heads only through INPUT.
    assert "blocks.11.hook_resid_post <- blocks.9.attn.hook_result[9]" in edges
    assert "blocks.10.hook_mlp_in <- blocks.9.attn.hook_result[9]" in edges
    assert not any("hook_result[4]" in e and "blocks.5." in e for e in edges)
    assert "blocks.2.hook_v_input[2] <- blocks.0.hook_resid_pre" in edges
    assert "blocks.7.hook_k_input[3] <- blocks.0.hook_resid_pre" not in edges
    assert "blocks.9.attn.hook_q[9] <- blocks.9.hook_q_input[9]" in edges


def test_greater_than_and_docstring_circuit_details():
    gt = greater_than_circuit()
    assert "blocks.8.hook_mlp_in <- blocks.8.attn.hook_result[11]" in gt  # own-layer MLP
    assert "blocks.5.hook_q_input[5] <- blocks.4.hook_mlp_out" in gt  # extra MLP -> AMID q
    assert "blocks.5.hook_k_input[5] <- blocks.4.hook_mlp_out" not in gt
    doc = docstring_circuit()
    assert sum("attn.hook_" in e.split(" <- ")[0] for e in doc) == 13  # direct edges
    assert "blocks.3.hook_k_input[6] <- blocks.1.attn.hook_result[2]" in doc


# ---- IOI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["paper", "jacdc"])
def test_ioi_prompts_real_tokenizer(gpt2_tok, data):
    prompts = make_ioi_prompts(gpt2_tok, n=200, seed=0, data=data)
    assert prompts.clean_tokens.shape == prompts.corrupted_tokens.shape == (200, 15)
    for i in (0, 57, 199):
        assert gpt2_tok.decode(prompts.clean_tokens[i].tolist()) == prompts.clean[i]
        assert gpt2_tok.decode(prompts.corrupted_tokens[i].tolist()) == prompts.corrupted[i]
        # The full 16-token sentence ends with the IO name.
        full = gpt2_tok.encode(prompts.clean[i] + " " + prompts.io_names[i])
        assert len(full) == 16 and full[-1] == prompts.io_tokens[i]
    assert prompts.clean[0].startswith("Then, ") and prompts.clean[0].endswith(" to")
    assert (prompts.io_tokens != prompts.s_tokens).all()
    np.testing.assert_array_equal(prompts.clean_tokens[:, 2], prompts.io_tokens)
    np.testing.assert_array_equal(prompts.clean_tokens[:, 4], prompts.clean_tokens[:, 10])
    # ABC: new names in the name slots; everything else unchanged.
    names = prompts.corrupted_tokens[:, [2, 4, 10]]
    distinct = [len(set(row)) == 3 for row in names.tolist()]
    if data == "jacdc":  # three distinct names
        assert all(distinct)
    else:  # the original's draws can repeat a name (here in 5 of 200 prompts)
        assert sum(distinct) == 195
    rest = [i for i in range(15) if i not in (2, 4, 10)]
    np.testing.assert_array_equal(prompts.clean_tokens[:, rest], prompts.corrupted_tokens[:, rest])
    for i in (0, 57, 199):
        assert prompts.clean_full[i] == prompts.clean[i] + " " + prompts.io_names[i]
        assert prompts.corrupted_full[i].startswith(prompts.corrupted[i] + " ")
    # Deterministic in the seed; the first prompts do not depend on how many are drawn.
    again = make_ioi_prompts(gpt2_tok, n=200, seed=0, data=data)
    assert again.clean == prompts.clean and again.corrupted == prompts.corrupted
    first = make_ioi_prompts(gpt2_tok, n=7, seed=0, data=data)
    assert first.clean == prompts.clean[:7] and first.corrupted == prompts.corrupted[:7]
    assert make_ioi_prompts(gpt2_tok, n=200, seed=1, data=data).clean != prompts.clean


def test_ioi_bundle(ioi_bundle):
    b = ioi_bundle
    assert b.name == "ioi" and b.default_metric == "kl_div"
    assert (b.val.batch, b.val.seq) == (100, 15) and b.test.batch == 100
    assert sorted(b.val.metrics) == ["kl_div", "logit_diff"]
    np.testing.assert_array_equal(b.val.logit_positions, [14])
    assert b.info["val_prompts"][0] != b.info["test_prompts"][0]
    assert b.canonical is None  # a 1-layer model has no GPT-2 circuit
    _check_patching(b)


def _check_patching(bundle):
    """All edges present: KL to the clean model is ~0; every metric is finite either way. The
    host-side info is JSON-serialisable."""
    json.dumps(bundle.info)
    model, task = bundle.model, bundle.val
    corrupted = jacdc.ablation_sources(model, task, False)
    full = jacdc.EdgeMask.full(model.graph_shape)
    empty = jacdc.EdgeMask.full(model.graph_shape, 0.0)
    assert abs(float(jacdc.metric_of_mask(model, task, full, corrupted, "kl_div"))) < 1e-5
    assert float(jacdc.metric_of_mask(model, task, empty, corrupted, "kl_div")) > 1e-6
    for name in task.metrics:
        for mask in (full, empty):
            assert np.isfinite(float(jacdc.metric_of_mask(model, task, mask, corrupted, name)))


def test_ioi_logit_diff_reads_io_and_s(ioi_bundle):
    b = ioi_bundle
    metric = b.val.metric("logit_diff")
    logits = np.zeros((100, 1, 50257), np.float32)
    logits[np.arange(100), 0, np.asarray(metric.correct)] = 2.0
    assert float(metric(jnp.asarray(logits))) == pytest.approx(-2.0)


def test_ioi_bad_tokenizer_errors(gpt2_tok):
    def splits_mary(text):  # " Mary" becomes two tokens
        ids = gpt2_tok.encode(text)
        mary = gpt2_tok.encode(" Mary")[0]
        return [t for i in ids for t in ((100, 200) if i == mary else (i,))]

    with pytest.raises(ValueError, match="not single tokens.*' Mary'"):
        make_ioi_prompts(splits_mary, n=5)

    def merges_then(text):  # "Then," becomes one token: prompts are 14 tokens long
        ids = gpt2_tok.encode(text)
        return ids[1:] if text.startswith("Then,") else ids

    with pytest.raises(ValueError, match="do not tokenize to the template's 16 tokens"):
        make_ioi_prompts(merges_then, n=5)


def test_ioi_tokenizer_vocab_mismatch(gpt2_tok, make_lm_model):
    with pytest.raises(ValueError, match="Tokenizer mismatch.*50257.*48262"):
        make_ioi_task(make_lm_model(d_vocab=48262), gpt2_tok, n_val=2, n_test=2)
    with pytest.raises(ValueError, match="Tokenizer mismatch"):  # bare callable: range check
        make_ioi_task(make_lm_model(d_vocab=1000), gpt2_tok.encode, n_val=2, n_test=2)


# ---- Greater-Than ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["paper", "jacdc"])
def test_greater_than_prompts_real_tokenizer(gpt2_tok, data):
    from jacdc.tasks._greater_than import GREATER_THAN_NOUNS, greater_than_years
    from jacdc.tasks._paper_data import PAPER_GREATER_THAN_NOUNS

    assert len(GREATER_THAN_NOUNS) == len(set(GREATER_THAN_NOUNS)) == 120
    assert len(PAPER_GREATER_THAN_NOUNS) == len(set(PAPER_GREATER_THAN_NOUNS)) == 120
    assert gpt2_tok.encode("01") == [486]
    prompts = make_greater_than_prompts(gpt2_tok, n=200, data=data)
    assert prompts.clean_tokens.shape == (200, 10)
    years = greater_than_years(gpt2_tok)
    for century in range(11, 18):
        valid = [
            century * 100 + yy
            for yy in range(2, 99)
            if gpt2_tok.encode(f" {century * 100 + yy}")
            == gpt2_tok.encode(f" {century}") + gpt2_tok.encode(f"{yy:02d}")
        ]
        assert len(valid) > 50
        in_century = [y for y in years if y // 100 == century]
        assert in_century == valid[1:-1]  # first and last valid year excluded
    for i in (0, 123):
        year = prompts.years[i]
        assert prompts.clean[i] == f"The {prompts.nouns[i]} lasted from the year {year} to " + str(
            year // 100
        )
        assert gpt2_tok.decode(prompts.clean_tokens[i].tolist()) == prompts.clean[i]
        assert gpt2_tok.decode([int(prompts.clean_tokens[i, 7])]) == f"{year % 100:02d}"
    np.testing.assert_array_equal(prompts.corrupted_tokens[:, 7], 486)
    np.testing.assert_array_equal(
        np.delete(prompts.clean_tokens, 7, 1), np.delete(prompts.corrupted_tokens, 7, 1)
    )
    assert [gpt2_tok.decode([int(t)]) for t in prompts.year_tokens] == [
        f"{i:02d}" for i in range(100)
    ]


def test_greater_than_bundle(greater_than_bundle):
    b = greater_than_bundle
    assert sorted(b.val.metrics) == ["greaterthan", "kl_div"]
    assert (b.val.batch, b.val.seq, b.test.batch) == (100, 10, 100)
    np.testing.assert_array_equal(b.val.logit_positions, [9])
    years = np.asarray(b.info["val_years"]) % 100
    np.testing.assert_array_equal(b.val.metric("greaterthan").start_year, years)
    _check_patching(b)


def test_greater_than_bad_tokenizer(gpt2_tok):
    with pytest.raises(ValueError, match="not single tokens"):  # character-level
        make_greater_than_prompts(lambda s: [ord(c) for c in s], n=3)

    def lasted_is_two_tokens(text):
        ids = gpt2_tok.encode(text)
        return ids + [0] if " lasted" in text else ids

    with pytest.raises(ValueError, match="do not tokenize to the template's 10 tokens"):
        make_greater_than_prompts(lasted_is_two_tokens, n=3)


# ---- Docstring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["paper", "jacdc"])
def test_docstring_prompts_same_length(gpt2_tok, data):
    bos = gpt2_tok.eot_token_id
    prompts = make_docstring_prompts(gpt2_tok, n=100, seed=0, bos=bos, data=data)
    n, seq = prompts.clean_tokens.shape
    assert n == 100 and prompts.corrupted_tokens.shape == (n, seq)
    assert (prompts.clean_tokens[:, 0] == bos).all()
    for i in range(100):
        assert len(gpt2_tok.encode(prompts.clean[i])) + 1 == seq
        assert len(prompts.wrong_answers[i]) == len(set(prompts.wrong_answers[i])) == 13
        assert prompts.answers[i] not in prompts.wrong_answers[i]
        assert gpt2_tok.encode(prompts.answers[i]) == [prompts.correct_tokens[i]]
    text = prompts.clean[0]
    assert text.startswith("\ndef ") and text.endswith("    :param")
    assert text.count(":param") == 3
    # The answer is the third matching def argument, i.e. the 5th of 6 def args.
    def_args = text.split("(self, ")[1].split(")")[0].split(", ")
    assert len(def_args) == 6 and " " + def_args[4] == prompts.answers[0]
    documented = [line.split(":param ")[1].split(":")[0] for line in text.split("\n")[4:6]]
    assert documented == def_args[2:4]
    # random_random: the 3 matching def args and 2 documented names change, nothing else.
    corrupted = prompts.corrupted[0]
    c_args = corrupted.split("(self, ")[1].split(")")[0].split(", ")
    assert c_args[:2] == def_args[:2] and c_args[5] == def_args[5]
    assert not set(c_args[2:5]) & set(def_args)
    assert corrupted.split('"""')[1].split("\n")[0] == text.split('"""')[1].split("\n")[0]
    # Seeded per prompt: the first prompts do not depend on how many are drawn.
    first = make_docstring_prompts(gpt2_tok, n=3, seed=0, bos=bos, data=data)
    assert first.clean == prompts.clean[:3]


def test_docstring_bundle(docstring_bundle):
    b = docstring_bundle
    assert sorted(b.val.metrics) == ["docstring_metric", "kl_div"]
    assert b.val.batch == b.test.batch == 50
    assert b.val.seq == b.info["seq_len"]
    np.testing.assert_array_equal(b.val.logit_positions, [b.val.seq - 1])
    assert b.val.metric("docstring_metric").wrong.shape == (50, 13)
    _check_patching(b)


def test_docstring_rejects_ragged_prompts(gpt2_tok):
    def ragged(text):  # every prompt mentioning "size" gets one token longer
        ids = gpt2_tok.encode(text)
        return ids + [0] if "size" in text and len(text) > 20 else ids

    with pytest.raises(ValueError, match="do not tokenize to the template's"):
        make_docstring_prompts(ragged, n=100, bos=0)


def test_docstring_tokenizer_errors(gpt2_tok, make_lm_model):
    attn_4l_like = make_lm_model(d_mlp=None, d_vocab=48262)
    with pytest.raises(ValueError, match="Tokenizer mismatch.*50257.*48262"):
        load_task("docstring", model=attn_4l_like, tokenizer=gpt2_tok, n_val=2, n_test=2)
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_task("docstring", model=attn_4l_like)
    with pytest.raises(ValueError, match="tokenizer.json"):  # before loading any weights
        load_task("docstring", weights="/nonexistent/attn-only-4l")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_task("docstring", model=attn_4l_like, tokenizer="/nonexistent/tokenizer.json")
    with pytest.raises(ValueError, match="single tokens"):
        make_docstring_prompts(lambda s: [ord(c) for c in s], n=2, data="jacdc")
    with pytest.raises(ValueError, match="do not tokenize to the template's 155 tokens"):
        make_docstring_prompts(lambda s: [ord(c) for c in s], n=2)  # the original's lists
    with pytest.raises(ValueError, match="data='paper'.*data='jacdc'"):
        load_task("docstring", model=attn_4l_like, tokenizer=gpt2_tok, data="original")


# ---- Induction ---------------------------------------------------------------------------------


def test_repeated_sequences_and_mask():
    tokens, mask = repeated_token_sequences(3, 11, (5, 50), seed=0, bos=1)
    assert tokens.shape == mask.shape == (3, 11)
    assert (tokens[:, 0] == 1).all()
    np.testing.assert_array_equal(tokens[:, 1:6], tokens[:, 6:11])
    assert ((tokens[:, 1:] >= 5) & (tokens[:, 1:] < 50)).all()
    np.testing.assert_array_equal(np.nonzero(mask[0])[0], [6, 7, 8, 9])
    odd, odd_mask = repeated_token_sequences(2, 9, (0, 9), seed=3)  # 4 + 4 + 1 extra token
    np.testing.assert_array_equal(odd[:, :4], odd[:, 4:8])
    np.testing.assert_array_equal(np.nonzero(odd_mask[0])[0], [4, 5, 6])
    distinct, _ = repeated_token_sequences(20, 16, (3, 11), seed=0, distinct=True)
    assert all(sorted(row[:8]) == list(range(3, 11)) for row in distinct.tolist())
    with pytest.raises(ValueError, match="distinct"):
        repeated_token_sequences(2, 16, (3, 10), seed=0, distinct=True)


def test_induction_mask_rule():
    from jacdc.tasks._induction import induction_mask

    tokens = np.array([[7, 3, 4, 7, 3, 9, 3, 4]])
    # Bigram (7,3) repeats at t=3; (3,4) repeats at t=6.
    np.testing.assert_array_equal(np.nonzero(induction_mask(tokens)[0])[0], [3, 6])


def test_induction_bundle(induction_bundle):
    from jacdc.tasks._induction import derangement

    b = induction_bundle
    assert b.canonical is None and sorted(b.val.metrics) == ["kl_div", "nll"]
    assert (b.val.batch, b.val.seq, b.test.batch) == (6, 21, 5)
    np.testing.assert_array_equal(b.val.logit_positions, np.arange(10, 19))
    clean = np.asarray(b.val.clean)
    np.testing.assert_array_equal(np.asarray(b.val.corrupted), clean[derangement(6, seed=42)])
    assert not (derangement(6, seed=42) == np.arange(6)).any()
    nll = b.val.metric("nll")
    np.testing.assert_array_equal(nll.targets, clean[:, 11:20])
    assert float(nll.weights.sum()) == 6 * 9
    assert not np.array_equal(np.asarray(b.val.clean), np.asarray(b.test.clean))
    _check_patching(b)
    with pytest.raises(ValueError, match="no canonical"):
        b.canonical_circuit()


def test_induction_nll_is_low_for_a_perfect_predictor(induction_bundle):
    b = induction_bundle
    nll = b.val.metric("nll")
    onehot = np.full((6, 9, 20), -30.0, np.float32)
    targets = np.asarray(nll.targets)
    onehot[np.arange(6)[:, None], np.arange(9)[None, :], targets] = 30.0
    assert float(nll(jnp.asarray(onehot))) < 1e-6
    assert float(nll(jnp.zeros((6, 9, 20)))) == pytest.approx(np.log(20), rel=1e-5)


@pytest.mark.parametrize("fmt", ["npz", "npz-nomask", "npy"])
def test_induction_token_file(tmp_path, tiny_induction_model, fmt):
    from jacdc.tasks import make_induction_task

    tokens, mask = repeated_token_sequences(5, 12, (0, 20), seed=5)
    path = tmp_path / f"data.{fmt[:3]}"
    if fmt == "npz":
        mask = mask.copy()
        mask[:, 6] = False  # a mask of one's own, not the default rule
        np.savez(path, tokens=tokens, mask=mask)
    elif fmt == "npz-nomask":
        np.savez(path, tokens=tokens)
    else:
        np.save(path, tokens)
    b = make_induction_task(tiny_induction_model, data=path, n_val=3, n_test=2)
    assert b.info["data"] == str(path)
    np.testing.assert_array_equal(np.asarray(b.val.clean), tokens[:3])
    np.testing.assert_array_equal(np.asarray(b.test.clean), tokens[3:])
    positions = np.asarray(b.val.logit_positions)
    if fmt == "npz":
        np.testing.assert_array_equal(positions, [7, 8, 9, 10])
    else:  # the bigram rule finds the repeated half (and maybe a chance repeat)
        assert set([6, 7, 8, 9, 10]) <= set(positions.tolist())
    with pytest.raises(ValueError, match="rows"):
        make_induction_task(tiny_induction_model, data=path, n_val=4, n_test=2)


def test_induction_errors(tiny_induction_model):
    from jacdc.tasks import make_induction_task

    with pytest.raises(ValueError, match="Tokenizer mismatch"):
        make_induction_task(
            tiny_induction_model, seq_len=10, n_val=2, n_test=2, token_range=(0, 30), data="jacdc"
        )
    with pytest.raises(ValueError, match="n_ctx"):
        make_induction_task(tiny_induction_model, seq_len=40, n_val=2, n_test=2, data="jacdc")


# ---- registry, weights ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ioi", "greater-than", "docstring", "induction"])
def test_registered_and_weights_required(name):
    spec = get_task(name)
    assert spec.needs_weights and spec.default_metric == "kl_div"
    with pytest.raises(ValueError, match="--weights"):
        load_task(name)


@pytest.mark.unchecked  # a stand-in ModelKind (no configs, a loader returning a tuple)
def test_resolve_model(make_lm_model):
    # The "random" paths build a model with `jax.random` (seconds of compilation): see the slow
    # test below.
    from jacdc.tasks._common import ModelKind, resolve_model

    kind = ModelKind(
        name="toy", config=None, small=None, load=lambda path: ("loaded", path),
        how_to="use --weights X.",
    )  # fmt: skip
    assert resolve_model(kind, "some/path", None) == ("loaded", "some/path")
    given = make_lm_model(d_vocab=30)
    assert resolve_model(kind, None, given) is given
    with pytest.raises(ValueError, match="needs its weights: use --weights X.*--weights random"):
        resolve_model(kind, None, None)
    with pytest.raises(ValueError, match="not both"):
        resolve_model(kind, "random", given)


@pytest.mark.slow
def test_random_small_weights():
    b = load_task("induction", weights="random-small", seq_len=16, n_val=2, n_test=2, data="jacdc")
    assert b.model.cfg.positional == "shortformer" and b.model.cfg.d_vocab == 50259
    assert b.model.cfg.n_layers == 2 and b.model.cfg.d_model == 64
    with pytest.raises(ValueError, match="not both"):
        load_task("induction", weights="random", model=b.model)


def test_random_full_size_configs():
    from jacdc.tasks._common import GPT2_SMALL
    from jacdc.tasks._induction import REDWOOD_ATTN_2L

    gpt2 = GPT2_SMALL.config()
    assert dataclasses.astuple(gpt2.graph_shape) == (12, 12, True, 1, False)
    assert gpt2.graph_shape.n_edges() == 32923
    assert REDWOOD_ATTN_2L.config().graph_shape.n_edges() == 305
    assert GPT2_SMALL.small().d_vocab == 50257 and GPT2_SMALL.small().has_mlp


# ---- the trained induction model (examples/train_induction.py) ------------------------------


def _example(name: str):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_induction_checkpoint_round_trip(tmp_path, tiny_induction_model, fmt):
    """The example's TransformerLens export loads back through the task's loader."""
    if fmt == "pth":
        pytest.importorskip("torch")
    train = _example("train_induction")
    folder = train.save(tiny_induction_model, str(tmp_path / "model"), fmt)
    loaded = load_task(
        "induction", weights=folder, seq_len=12, n_val=2, n_test=2, data="jacdc"
    ).model
    assert loaded.cfg == dataclasses.replace(tiny_induction_model.cfg, fold_value_biases=True)
    tokens = jnp.asarray(repeated_token_sequences(2, 12, (0, 20), seed=0)[0])
    from jacdc.models import clean_run

    np.testing.assert_allclose(
        clean_run(loaded, tokens)[0], clean_run(tiny_induction_model, tokens)[0], atol=1e-5
    )


@pytest.mark.slow
def test_acdc_finds_previous_token_to_induction_key_edge(tmp_path):
    """Trains the example's 2-layer attention-only model (a few minutes on CPU; or loads the
    folder in `$JACDC_INDUCTION_MODEL`), runs ACDC (KL, corrupted ablation) on the Induction
    task through the registry, and checks that the circuit keeps the edge from the layer-0
    previous-token head into the key of the layer-1 induction head."""
    import os

    import jax.random as jr

    train = _example("train_induction")
    folder = os.environ.get("JACDC_INDUCTION_MODEL")
    if folder is None:
        model, summary = train.train(seed=0, verbose=False)
        assert summary["eval_repeated_loss"] < 0.2, summary
        folder = train.save(model, str(tmp_path / "induction_2l"))
    tokens, mask = train.sample_batch(jr.key(7), 100, 40, 64)
    data = tmp_path / "data.npz"
    np.savez(data, tokens=np.asarray(tokens), mask=np.asarray(mask))
    bundle = load_task("induction", weights=folder, data=str(data), n_val=50, n_test=50)
    prev, ind, prev_scores, ind_scores = train.find_heads(bundle.model, tokens, mask)
    assert ind_scores[ind] > 0.5, ind_scores  # a real induction head

    result = jacdc.acdc(bundle.model, bundle.val, 0.05, metric="kl_div")
    edge = f"blocks.1.hook_k_input[{ind}] <- blocks.0.attn.hook_result[{prev}]"
    assert edge in result.present_names, (edge, result.present_names)
    assert f"blocks.1.attn.hook_k[{ind}] <- blocks.1.hook_k_input[{ind}]" in result.present_names
    assert result.n_edges < len(jacdc.graph_of(bundle.model.graph_shape))


def test_docstring_tokenizer_json(tmp_path, attn_only_gpt2_vocab_model, gpt2_tok, docstring_bundle):
    """`tokenizer=PATH` reads a Hugging Face tokenizer.json (here: GPT-2's BPE rebuilt with the
    `tokenizers` library, standing in for attn-only-4l's, which is not available offline)."""
    tokenizers = pytest.importorskip("tokenizers")
    from jacdc.models._tokenizer import bpe_files
    from jacdc.tasks._docstring import FileTokenizer

    encoder, merges = bpe_files()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(encoder), str(merges)))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))

    wrapped = FileTokenizer(path)
    assert wrapped.vocab_size == 50257 and wrapped.bos_token_id == 50256
    text = docstring_bundle.info["val_prompts"][0]
    assert wrapped.encode(text) == gpt2_tok.encode(text)
    b = load_task("docstring", model=attn_only_gpt2_vocab_model, tokenizer=str(path))
    np.testing.assert_array_equal(np.asarray(b.val.clean), np.asarray(docstring_bundle.val.clean))
