"""Text-prompt tasks (CSV/JSONL, variable lengths), `load_pretrained`, and the CLI on any
checkpoint without a built-in task."""

import json
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import textdata

import jacdc
from jacdc import tasks
from jacdc._cli import main
from jacdc.models import TransformerConfig, load_pretrained


@pytest.fixture(scope="module")
def tl(tmp_path_factory):
    folder = textdata.write_tl_folder(tmp_path_factory.mktemp("tl") / "model")
    pre = load_pretrained(folder)
    return folder, pre.model, pre.tokenizer


def _cols(rows):
    return [list(c) for c in zip(*rows)]


def test_load_pretrained_dispatches_on_the_folder(tl, tmp_path):
    folder, model, tok = tl
    pre = load_pretrained(folder)
    assert pre.kind == "transformer-lens" and "transformer-lens" in jacdc.models.LOADERS
    assert tok.encode(" Mary") == [tok.encode(" Mary")[0]]
    # A checkpoint file with its config.json beside it loads the same model.
    same = load_pretrained(folder / "model_final.npz").model
    np.testing.assert_array_equal(np.asarray(same.w_e), np.asarray(model.w_e))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FooForCausalLM"]}))
    with pytest.raises(ValueError, match="FooForCausalLM is not supported"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "nope")


def test_padded_and_unpadded_prompt_give_the_same_metric(tl):
    _, model, tok = tl
    short, long = textdata.ROWS[1], textdata.ROWS[0]  # 7 and 11 tokens
    metrics = ("logit_diff", "prob_diff", "logprob", "kl_div", "nll")
    both = tasks.from_prompts(model, tok, *_cols([short, long]), metrics=metrics,
                              test_fraction=0.0)  # fmt: skip
    alone = tasks.from_prompts(model, tok, *_cols([short]), metrics=metrics, test_fraction=0.0)
    assert both.val.seq == 11 and alone.val.seq == 7
    assert both.val.lengths.tolist() == [7, 11]
    graph = jacdc.graph_of(model.graph_shape)
    rng = np.random.default_rng(0)
    circuit = graph.from_vector((rng.random(len(graph)) < 0.5).astype(np.float32))
    logits = eqx.filter_jit(jacdc.masked_logits)
    src_b = jacdc.ablation_sources(model, both.val)
    src_a = jacdc.ablation_sources(model, alone.val)
    for mask in (graph.from_vector(np.ones(len(graph), np.float32)), circuit):
        lb = logits(model, both.val, mask, src_b)
        la = logits(model, alone.val, mask, src_a)
        for name in metrics:
            pb = np.asarray(both.val.metrics[name].per_example(lb))[0]
            pa = np.asarray(alone.val.metrics[name].per_example(la))[0]
            np.testing.assert_allclose(pb, pa, rtol=1e-5, atol=1e-6, err_msg=name)


def test_metrics_read_each_prompts_own_last_token(tl):
    _, model, tok = tl
    bundle = tasks.from_prompts(model, tok, *_cols(textdata.ROWS), test_fraction=0.0)
    task = bundle.val
    logits, _ = jacdc.models.clean_run(model, task.clean)
    lengths = np.asarray(task.lengths)
    last = np.asarray(logits)[np.arange(task.batch), lengths - 1]
    ids = [(tok.encode(r[2])[0], tok.encode(r[3])[0]) for r in textdata.ROWS]
    hand = -np.mean([last[i, c] - last[i, w] for i, (c, w) in enumerate(ids)])
    graph = jacdc.graph_of(model.graph_shape)
    full = graph.from_vector(np.ones(len(graph), np.float32))
    src = jacdc.ablation_sources(model, task)
    got = float(jacdc.metric_of_mask(model, task, full, src, "logit_diff"))
    np.testing.assert_allclose(got, hand, rtol=1e-5, atol=1e-5)
    lp = last - np.log(np.exp(last - last.max(-1, keepdims=True)).sum(-1, keepdims=True))
    lp -= last.max(-1, keepdims=True)
    hand_lp = -np.mean([lp[i, c] for i, (c, _) in enumerate(ids)])
    got_lp = float(jacdc.metric_of_mask(model, task, full, src, "logprob"))
    np.testing.assert_allclose(got_lp, hand_lp, rtol=1e-5, atol=1e-5)


def test_csv_jsonl_and_lists_agree(tl, tmp_path):
    _, model, tok = tl
    ref = tasks.from_prompts(model, tok, *_cols(textdata.ROWS), seed=3)
    a = tasks.from_file(textdata.write_csv(tmp_path / "p.csv"), model, tok, seed=3)
    b = tasks.from_file(textdata.write_jsonl(tmp_path / "p.jsonl"), model, tok, seed=3)
    for other in (a, b):
        for split in ("val", "test"):
            x, y = getattr(ref, split), getattr(other, split)
            np.testing.assert_array_equal(np.asarray(x.clean), np.asarray(y.clean))
            assert sorted(x.metrics) == sorted(y.metrics)
    assert ref.info["val_rows"] != ref.info["test_rows"]
    # EAP-IG's convention: token ids in correct_idx / incorrect_idx, and a split column.
    ids = [[str(tok.encode(r[2])[0]) for r in textdata.ROWS],
           [str(tok.encode(r[3])[0]) for r in textdata.ROWS]]  # fmt: skip
    rows = [(r[0], r[1], c, w) for r, c, w in zip(textdata.ROWS, *ids)]
    path = textdata.write_csv(tmp_path / "eap.csv", rows,
                              ("clean", "corrupted", "correct_idx", "incorrect_idx"),
                              {"split": ["val", "test", "val", "test"]})  # fmt: skip
    c = tasks.from_file(path, model, tok)
    assert c.info["val_rows"] == [0, 2] and c.info["test_rows"] == [1, 3]
    # Lists of answers (JSON in a CSV cell), and a position column.
    rows = [(r[0], r[1], json.dumps([r[2], r[3]]), r[3]) for r in textdata.ROWS]
    path = textdata.write_csv(tmp_path / "lists.csv", rows, extra={"position": [-1, -2, 3, -1]})
    d = tasks.from_file(path, model, tok, test_fraction=0.0)
    lengths = np.asarray(d.val.lengths)
    pos = np.asarray(d.val.logit_positions)[np.asarray(d.val.metrics["logprob"].index)]
    assert pos.tolist() == [lengths[0] - 1, lengths[1] - 2, 3, lengths[3] - 1]
    assert d.val.metrics["logprob"].correct.shape == (4, 2)


def _bad(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("missing.csv", b"clean,corrupted\nWhen Mary,When Tom\n", "missing column(s) correct"),
        ("empty.csv", b"", "is empty"),
        ("latin1.csv", "clean,corrupted,correct\nWhen Marié,x,y\n".encode("latin-1"), "not UTF-8"),
        ("len.csv", b"clean,corrupted,correct\nWhen Mary,When Mary and,x\n", "row 1: clean and"),
        ("multi.csv", b"clean,corrupted,correct\nWhen Mary,When Tom, Mary John\n", "' Mary John'"),
        ("long.csv", ("clean,corrupted,correct\nWhen" + " the" * 16 + ",When" + " to" * 16
                      + ", Mary\n").encode(), "longer than the model's context"),
    ],
)  # fmt: skip
def test_bad_prompt_files_are_one_line_errors(tl, tmp_path, capsys, name, content, needle):
    folder, model, tok = tl
    path = _bad(tmp_path, name, content)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        tasks.from_file(path, model, tok)
    out = tmp_path / "out"
    code = main(["discover", "--weights", str(folder), "--prompts", str(path), "--out", str(out),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("jacdc: error:"), err
    assert needle in err[0]
    assert not out.exists()
    if name == "multi.csv":
        assert "--first-token" in err[0]
        b = tasks.from_file(path, model, tok, first_token=True, test_fraction=0.0)
        assert int(b.val.metrics["logprob"].correct[0, 0]) == tok.encode(" Mary")[0]


def test_bidirectional_models_refuse_variable_lengths(tl):
    _, _, tok = tl
    cfg = TransformerConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=None, d_vocab=306,
                            n_ctx=16, causal=False)  # fmt: skip
    model = jacdc.models.Transformer(cfg, key=jr.key(0))
    with pytest.raises(ValueError, match="need a causal model"):
        tasks.from_prompts(model, tok, *_cols(textdata.ROWS[:2]))
    same = tasks.from_prompts(model, tok, *_cols([textdata.ROWS[0], textdata.ROWS[2]]),
                              test_fraction=0.0)  # fmt: skip
    assert same.val.seq == 11


def test_python_api_runs_acdc_eap_ig_and_sp(tl):
    _, model, tok = tl
    bundle = tasks.from_prompts(model, tok, *_cols(textdata.ROWS), test_fraction=0.0)
    task = bundle.val
    r = jacdc.acdc(model, task, 0.02, metric="logit_diff")
    assert 0 < r.n_edges < len(r.graph)
    scores = jacdc.eap_ig_scores(model, task, metric="logit_diff", steps=2)
    assert np.all(np.isfinite(scores)) and np.any(scores != 0)
    sp = jacdc.subnetwork_probing(model, task, 1.0, key=jr.key(0), metric="kl_div", n_steps=3)
    assert sp.present.shape == (len(r.graph),)


@pytest.mark.parametrize("algorithm", ["acdc", "eap-ig", "sp"])
def test_cli_runs_on_a_checkpoint_without_a_task(tl, tmp_path, capsys, algorithm):
    folder, _, _ = tl
    csv = textdata.write_csv(tmp_path / "prompts.csv")
    out = tmp_path / algorithm
    argv = ["discover", "--weights", str(folder), "--prompts", str(csv), "--algorithm",
            algorithm, "--metric", "logit_diff", "--out", str(out), "--no-progress"]  # fmt: skip
    if algorithm == "sp":
        argv += ["--steps", "3", "--ablation", "mean"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    hyper = doc["hyperparameters"]
    assert doc["task"] == "prompts" and hyper["prompts"] == str(csv)
    assert hyper["ablation"]["kind"] == ("mean" if algorithm == "sp" else "corrupted")
    assert set(doc["metrics"]["test"]) >= {"logit_diff", "prob_diff", "logprob", "kl_div"}


def test_builtin_task_uses_the_users_dataset_without_building_its_own(tmp_path, capsys):
    # The reported bug: induction builds 300-token sequences for an n_ctx 16 checkpoint.
    folder = textdata.write_tl_folder(tmp_path / "m", n_ctx=16, with_tokenizer=False)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 400, (3, 10)).astype(np.int32)
    np.savez(tmp_path / "d.npz", clean=tokens, corrupted=tokens[::-1].copy())
    out = tmp_path / "out"
    code = main(["discover", "induction", "--weights", str(folder), "--dataset",
                 str(tmp_path / "d.npz"), "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    assert doc["task"] == "induction" and doc["model"]["n_ctx"] == 16
    # And without the task name: the same data on the same checkpoint.
    out2 = tmp_path / "out2"
    assert main(["discover", "--weights", str(folder), "--dataset", str(tmp_path / "d.npz"),
                 "--out", str(out2), "--no-progress"]) == 0  # fmt: skip
    doc2 = json.loads((out2 / "result.json").read_text())
    assert [e["present"] for e in doc2["edges"]] == [e["present"] for e in doc["edges"]]
    # Text prompts need a tokenizer, which this folder lacks.
    code = main(["discover", "--weights", str(folder), "--prompts", str(tmp_path / "d.npz")])
    assert code == 2


def test_import_jacdc_from_a_checkout_without_installing():
    import os
    import site
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()), JAX_PLATFORMS="cpu")
    # -S: no site-packages .pth files, so no editable-install finder: only the checkout.
    code = "import jacdc, jacdc.tasks; print(jacdc.models.__file__); print(jacdc.tasks.__file__)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=root, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines == [str(root / "models" / "__init__.py"), str(root / "tasks" / "__init__.py")]


def test_paper_thresholds_are_the_decimals_they_print_as():
    from jacdc._cli import paper_thresholds

    grid = paper_thresholds()
    assert len(grid) == 21 and grid[0] == 1e-05 and grid[-1] == 0.1 and grid[10] == 0.001
    assert repr(grid[0]) == "1e-05"
    assert np.allclose(grid, 10.0 ** np.linspace(-5, -1, 21), rtol=1e-11, atol=0)
    assert jnp.all(jnp.diff(jnp.asarray(grid)) > 0)


def test_load_pretrained_reads_a_gpt2_folder(tmp_path):
    from test_gpt2 import BASE_CONFIG, _random_hf_tensors, _write_folder

    from jacdc.models import load_gpt2

    folder = _write_folder(
        tmp_path / "g", BASE_CONFIG, _random_hf_tensors(np.random.default_rng(0))
    )
    pre = load_pretrained(folder)
    assert pre.kind == "GPT2LMHeadModel"
    np.testing.assert_array_equal(np.asarray(pre.model.w_e), np.asarray(load_gpt2(folder).w_e))
    assert pre.tokenizer is None or pre.tokenizer.encode(" Mary")
    # The dispatch table is open: another architecture plugs in under its `architectures` name.
    cfg = dict(BASE_CONFIG, architectures=["TinyForCausalLM"])
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    jacdc.models.register_loader("TinyForCausalLM", lambda path, config: pre.model)
    try:
        assert load_pretrained(folder).kind == "TinyForCausalLM"
    finally:
        del jacdc.models.LOADERS["TinyForCausalLM"]
