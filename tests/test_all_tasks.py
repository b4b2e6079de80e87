"""Invariants every registered task must satisfy, and ACDC end to end on each of them."""

import numpy as np
import pytest

import jacdc
from jacdc import tasks


LM_OPTIONS = {"weights": "random-small", "n_val": 4, "n_test": 4}
EXTRA = {"induction": {"seq_len": 24, "data": "jacdc"}}  # the paper's data files are not here


def build(name):
    spec = tasks.get_task(name)
    if spec.needs_weights:
        return tasks.load_task(name, **LM_OPTIONS, **EXTRA.get(name, {}))
    return tasks.load_task(name)


@pytest.mark.parametrize("name", tasks.available_tasks())
@pytest.mark.parametrize("zero_ablation", [False, True])
def test_every_metric_is_zero_with_every_edge_present(name, zero_ablation):
    bundle = build(name)
    full = jacdc.EdgeMask.full(bundle.model.graph_shape)
    for split in (bundle.val, bundle.test):
        corrupted = jacdc.ablation_sources(bundle.model, split, zero_ablation)
        for metric in ("kl_div", "l2"):
            if metric in split.metrics:
                value = float(jacdc.metric_of_mask(bundle.model, split, full, corrupted, metric))
                assert abs(value) < 1e-6, (name, metric, value)


@pytest.mark.parametrize(
    "name", [n for n in tasks.available_tasks() if tasks.get_task(n).needs_weights]
)
def test_acdc_end_to_end_on_random_weights(name, tmp_path):
    from jacdc import _results

    bundle = build(name)
    result = jacdc.acdc(bundle.model, bundle.val, 1e-3, metric=bundle.default_metric)
    assert 0 < result.n_tests <= len(result.graph)
    assert np.isfinite(result.metric)
    paths = _results.write_result(
        tmp_path,
        algorithm="acdc",
        task=name,
        model_config=bundle.model.cfg,
        graph=result.graph,
        present=result.present,
        hyperparameters={"threshold": 1e-3},
        metrics={"validation": {bundle.default_metric: result.metric}},
        steps=result.log,
    )
    doc = _results.read_result(paths["json"])
    assert doc["task"] == name and doc["n_edges"] == result.n_edges


@pytest.mark.parametrize(
    "name", [n for n in tasks.available_tasks() if tasks.get_task(n).needs_weights]
)
def test_sp_and_eap_end_to_end_on_random_weights(name, tmp_path):
    import jax.random as jr

    from jacdc import _results

    bundle = build(name)
    metric = bundle.default_metric
    graph = jacdc.graph_of(bundle.model.graph_shape)
    sp = jacdc.subnetwork_probing(
        bundle.model, bundle.val, 0.5, key=jr.key(0), metric=metric, n_steps=5
    )
    # EAP on the task's own metric: KL's gradient vanishes at the full model (refused).
    task_metric = next(m for m in sorted(bundle.val.metrics) if m != "kl_div")
    eap = jacdc.eap_scores(bundle.model, bundle.val, metric=task_metric)
    assert sp.present.shape == eap.shape == (len(graph),)
    assert np.isfinite(eap).all() and np.abs(eap).max() > 0
    for algorithm, present, scores in (
        ("sp", sp.present, None),
        ("eap", jacdc.circuit_from_scores(eap, top_k=10), eap),
    ):
        paths = _results.write_result(
            tmp_path / algorithm,
            algorithm=algorithm,
            task=name,
            model_config=bundle.model.cfg,
            graph=graph,
            present=present,
            hyperparameters={},
            metrics={},
            scores=scores,
        )
        doc = _results.read_result(paths["json"])
        assert doc["algorithm"] == algorithm and doc["n_edges"] == int(np.sum(present))


def test_discover_ioi_from_a_gpt2_checkpoint_folder(tmp_path, capsys):
    """`jacdc discover ioi --weights FOLDER` end to end, on a tiny random GPT-2 saved by
    `transformers` in the Hugging Face format (the real GPT-2 tokenizer needs 50,257 ids)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jacdc import _cli, _results

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, n_positions=32, vocab_size=50257
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    code = _cli.main(
        [
            "discover",
            "ioi",
            "--weights",
            str(tmp_path / "gpt2"),
            "--threshold",
            "0.01",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--n-val",
            "20",
            "--n-test",
            "20",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = _results.read_result(tmp_path / "run" / "result.json")
    assert doc["task"] == "ioi" and doc["n_edges_total"] == len(
        jacdc.graph_of(jacdc.GraphShape(1, 2, True, 1))
    )
    assert {"kl_div", "logit_diff"} <= set(doc["metrics"]["test"])
    assert doc["hyperparameters"]["task_data"] == "paper"  # the original's prompts by default
    argv = ["discover", "ioi", "--weights", str(tmp_path / "gpt2"), "--algorithm", "eap",
            "--n-val", "20", "--n-test", "20"]  # fmt: skip
    code = _cli.main(argv + ["--data", "jacdc", "--out", str(tmp_path / "eap"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    doc = _results.read_result(tmp_path / "eap" / "result.json")
    assert doc["hyperparameters"]["task_data"] == "jacdc"
