"""`jacdc eval` (re-scoring a saved circuit) and `jacdc compare` (overlaps, one plot)."""

import json

import numpy as np
import pytest
import textdata

import jacdc
from jacdc import _compare, _eval, _results, tasks
from jacdc._cli import main
from jacdc.models import load_pretrained


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return root, textdata.write_tl_folder(root / "model"), textdata.write_csv(root / "p.csv")


@pytest.fixture(scope="module")
def runs(data):
    """An ACDC and an EAP run on the tiny checkpoint's prompts, through the CLI."""
    root, folder, csv = data
    common = ["--weights", str(folder), "--prompts", str(csv), "--metric", "logit_diff",
              "--no-progress"]  # fmt: skip
    assert main(["discover", *common, "--out", str(root / "acdc"), "--threshold", "0.05",
                 "--engine", "reference"]) == 0  # fmt: skip
    assert main(["discover", *common, "--out", str(root / "eap"), "--algorithm", "eap",
                 "--top-k", "6", "--ablation", "mean"]) == 0  # fmt: skip
    return root, folder, csv


def _eval_json(capsys, *argv):
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_eval_reproduces_the_stored_metrics(runs, capsys, tmp_path):
    root, folder, csv = runs
    for name in ("acdc", "eap"):
        result = root / name / "result.json"
        doc = _results.read_result(result)
        stored = doc["metrics"]["validation"]["logit_diff"]
        # The result's own data (its prompts file, the validation split it was found on)...
        _eval_json(capsys, str(result), "--out", str(tmp_path / f"{name}.json"))
        rep = json.loads((tmp_path / f"{name}.json").read_text())
        np.testing.assert_allclose(rep["circuit"], stored, rtol=1e-5, atol=1e-6)
        # ...and the same file given explicitly, same split.
        _eval_json(capsys, str(result), "--prompts", str(csv), "--split", "val", "--out",
                   str(tmp_path / f"{name}2.json"))  # fmt: skip
        rep2 = json.loads((tmp_path / f"{name}2.json").read_text())
        np.testing.assert_allclose(rep2["circuit"], stored, rtol=1e-5, atol=1e-6)
        assert rep["ablation"]["kind"] == ("mean" if name == "eap" else "corrupted")
        test = doc["metrics"]["test"]["logit_diff"]
        _eval_json(capsys, str(result), "--prompts", str(csv), "--split", "test", "--out",
                   str(tmp_path / f"{name}3.json"))  # fmt: skip
        rep3 = json.loads((tmp_path / f"{name}3.json").read_text())
        np.testing.assert_allclose(rep3["circuit"], test, rtol=1e-5, atol=1e-6)
    assert "cpr" in rep and "cmd" in rep and len(rep["curve"]["f"]) == 10  # EAP is score-based
    assert "cpr" not in json.loads((tmp_path / "acdc.json").read_text())


def test_faithfulness_by_hand(data):
    """m(C), m(M), m(∅) from the logits by hand (NumPy), and f from the formula."""
    _, folder, csv = data
    pre = load_pretrained(folder)
    model, tok = pre.model, pre.tokenizer
    task = tasks.from_file(csv, model, tok, test_fraction=0.0).val
    graph = jacdc.graph_of(model.graph_shape)
    present = np.ones(len(graph), bool)
    present[::4] = False
    src = jacdc.ablation_sources(model, task)
    ids = np.array([(tok.encode(r[2])[0], tok.encode(r[3])[0]) for r in textdata.ROWS])
    last = np.asarray(task.lengths) - 1

    def hand(vec):
        logits = np.asarray(
            jacdc.masked_logits(model, task, graph.from_vector(vec.astype(np.float32)), src)
        )
        pos = np.searchsorted(np.asarray(task.logit_positions), last)
        x = logits[np.arange(task.batch), pos]
        return -np.mean(x[np.arange(task.batch), ids[:, 0]] - x[np.arange(task.batch), ids[:, 1]])

    mc, mm, me = hand(present), hand(np.ones(len(graph), bool)), hand(np.zeros(len(graph), bool))
    rep = _eval.evaluate_circuit(model, task, present, "logit_diff")
    np.testing.assert_allclose(
        [rep["circuit"], rep["full_model"], rep["empty_circuit"]], [mc, mm, me], rtol=1e-5,
        atol=1e-6,
    )  # fmt: skip
    assert abs(mm - me) > 0.03  # a well-conditioned ratio
    np.testing.assert_allclose(rep["faithfulness"], (mc - me) / (mm - me), rtol=1e-4, atol=1e-5)
    full = _eval.evaluate_circuit(model, task, np.ones(len(graph), bool), "logit_diff")
    assert abs(full["faithfulness"] - 1.0) < 1e-6


def test_eval_refuses_a_result_from_another_model(runs, tmp_path, capsys):
    root, _, csv = runs
    other = textdata.write_tl_folder(tmp_path / "other", n_layers=1)
    out = tmp_path / "rep.json"
    code = main(["eval", str(root / "acdc" / "result.json"), "--weights", str(other),
                 "--prompts", str(csv), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another model" in err[0], err
    assert "n_layers 2 vs 1" in err[0] and not out.exists()


def _names_nodes(names):
    nodes = set()
    for n in names:
        recv, send = n.split(" <- ")
        nodes |= {recv, send}
    return nodes


def test_compare_gives_the_hand_computed_overlaps(runs, tmp_path, capsys):
    root, _, _ = runs
    a_doc = _results.read_result(root / "acdc" / "result.json")
    b_doc = _results.read_result(root / "eap" / "result.json")
    a = {e["name"] for e in a_doc["edges"] if e["present"]}
    b = {e["name"] for e in b_doc["edges"] if e["present"]}
    out = tmp_path / "cmp"
    code = main(["compare", str(root / "acdc" / "result.json"), str(root / "eap" / "result.json"),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rep = json.loads((out / "compare.json").read_text())
    ab = rep["pairs"][0]
    assert ab["edges"]["overlap"] == len(a & b)
    assert ab["edges"]["jaccard"] == pytest.approx(len(a & b) / len(a | b))
    assert ab["edges"]["precision"] == pytest.approx(len(a & b) / len(a))
    assert ab["edges"]["recall"] == pytest.approx(len(a & b) / len(b))
    na, nb = _names_nodes(a), _names_nodes(b)
    assert ab["nodes"]["overlap"] == len(na & nb)
    assert ab["nodes"]["jaccard"] == pytest.approx(len(na & nb) / len(na | nb))
    assert ab["nodes"]["precision"] == pytest.approx(len(na & nb) / len(na))
    assert rep["pairs"][1]["edges"]["precision"] == pytest.approx(len(a & b) / len(b))
    assert (out / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (out / "faithfulness.svg").read_bytes()[:2000]
    assert not list(out.glob(".*.tmp"))


def test_overlap_stats_toy():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 1], bool)
    assert _compare.overlap_stats(a, b) == {
        "overlap": 2, "jaccard": 0.5, "precision": 2 / 3, "recall": 2 / 3,
    }  # fmt: skip
    empty = np.zeros(5, bool)
    assert _compare.overlap_stats(empty, empty) == {
        "overlap": 0, "jaccard": 1.0, "precision": None, "recall": None,
    }  # fmt: skip


def test_compare_refuses_other_graphs(runs, tmp_path, capsys):
    root, _, _ = runs
    doc = json.loads((root / "acdc" / "result.json").read_text())
    doc["graph"]["n_layers"] = 1
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    code = main(["compare", str(root / "acdc" / "result.json"), str(other), "--no-plot",
                 "--out", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "another graph" in err[0]
    assert not (tmp_path / "c").exists()
