import json

import numpy as np
import pytest

import jacdc
from jacdc import _cli, _results, tasks


def run(argv, capsys):
    code = _cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_tasks_lists_the_tracr_tasks(capsys):
    code, out, _ = run(["tasks"], capsys)
    assert code == 0
    assert "tracr-reverse" in out and "tracr-proportion" in out


def test_discover_writes_a_complete_result(tmp_path, capsys):
    out_dir = tmp_path / "rev"
    code, out, _ = run(
        ["discover", "tracr-reverse", "--zero-ablation", "--out", str(out_dir), "--no-progress"],
        capsys,
    )
    assert code == 0, out
    doc = _results.read_result(out_dir / "result.json")
    bundle = tasks.load_task("tracr-reverse")
    assert doc["schema_version"] == 2
    assert doc["algorithm"] == "acdc" and doc["task"] == "tracr-reverse"
    assert doc["n_edges_total"] == 106
    present = sorted(e["name"] for e in doc["edges"] if e["present"])
    assert present == sorted(bundle.canonical_circuit())
    assert doc["hyperparameters"]["zero_ablation"] is True
    assert doc["hyperparameters"]["layers"] == "scan"
    assert doc["metrics"]["validation"]["l2"] < 1e-6
    assert set(doc["metrics"]["test"]) == set(bundle.test.metrics)
    assert len(doc["steps"]) > 0 and {"edge", "delta", "removed"} <= set(doc["steps"][0])
    with np.load(out_dir / "result.npz") as npz:
        np.testing.assert_array_equal(npz["present"], [e["present"] for e in doc["edges"]])
    dot = (out_dir / "result.dot").read_text()
    assert dot.count("->") == 15
    assert not (out_dir / "checkpoint.jsonl").exists()
    assert not list(out_dir.glob(".*.tmp"))


def test_sweep_writes_one_result_per_threshold(tmp_path, capsys):
    code, out, _ = run(
        [
            "sweep",
            "tracr-proportion",
            "--thresholds",
            "0.001",
            "0.01",
            "--zero-ablation",
            "--out",
            str(tmp_path),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, out
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["threshold"] for r in summary["runs"]] == [0.001, 0.01]
    for r in summary["runs"]:
        assert (tmp_path / r["result"]).exists()


def _one_line_error(code, err):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert lines[0].startswith("jacdc: error:")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["discover", "no-such-task"], "Unknown task 'no-such-task'"),
        (["discover", "tracr-reverse", "--threshold", "-1"], ">= 0"),
        (["discover", "tracr-reverse", "--metric", "logit_diff"], "Unknown metric 'logit_diff'"),
        (["discover", "tracr-reverse", "--dataset", "/nonexistent/data.npz"], "does not exist"),
        (["roc", "tracr-reverse", "--algorithms", "acdc,magic"], "magic"),
        (["draw", "/nonexistent/result.json"], "No result file"),
        (["discover", "tracr-reverse", "--data", "jacdc"], "has no --data option"),
        (["discover", "ioi", "--weights", "random", "--data-dir", "x"], "no --data-dir option"),
        (
            ["discover", "induction", "--weights", "random"],
            "hf download ArthurConmy/redwood_attn_2l",
        ),
        (
            ["discover", "induction", "--weights", "random", "--data-dir", "/nonexistent"],
            "validation_data.pt",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    code, _, err = run(argv + (["--out", str(tmp_path)] if argv[0] == "discover" else []), capsys)
    assert needle in _one_line_error(code, err)


def _dataset(tmp_path, name="data.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_dataset_errors(tmp_path, capsys):
    bundle = tasks.load_task("tracr-reverse")
    clean = np.asarray(bundle.val.clean)
    cases = {
        "shape": (dict(clean=clean, corrupted=clean[:, :3]), "shapes differ"),
        "empty": (dict(clean=clean[:0], corrupted=clean[:0]), "non-empty"),
        "vocab": (dict(clean=clean + 10, corrupted=clean), "ids must lie in [0, 5)"),
        "missing": (dict(clean=clean), "missing key 'corrupted'"),
    }
    for label, (arrays, needle) in cases.items():
        path = _dataset(tmp_path, f"{label}.npz", **arrays)
        code, _, err = run(
            [
                "discover",
                "tracr-reverse",
                "--dataset",
                path,
                "--out",
                str(tmp_path / label),
                "--no-progress",
            ],
            capsys,
        )
        assert needle in _one_line_error(code, err), label


def test_dataset_replays_the_builtin_data(tmp_path, capsys):
    bundle = tasks.load_task("tracr-reverse")
    path = _dataset(
        tmp_path,
        clean=np.asarray(bundle.val.clean),
        corrupted=np.asarray(bundle.val.corrupted),
    )
    code, out, _ = run(
        [
            "discover",
            "tracr-reverse",
            "--dataset",
            path,
            "--out",
            str(tmp_path / "mine"),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, out
    mine = _results.read_result(tmp_path / "mine" / "result.json")
    builtin = jacdc.acdc(bundle.model, bundle.val, 0.01, metric="l2")
    assert [e["present"] for e in mine["edges"]] == builtin.present.tolist()
    assert mine["hyperparameters"]["dataset"] == path


def test_killed_run_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    argv = [
        "discover",
        "tracr-reverse",
        "--threshold",
        "0.001",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    original = jacdc.acdc_sweep

    def interrupted(*args, **kwargs):
        return original(*args, stop_after_nodes=12, **kwargs)

    monkeypatch.setattr(jacdc, "acdc_sweep", interrupted)
    code, _, err = run(argv, capsys)
    assert code == 130 and "resume" in err
    assert (tmp_path / "checkpoint.jsonl").exists()
    assert not (tmp_path / "result.json").exists()
    monkeypatch.setattr(jacdc, "acdc_sweep", original)
    code, _, err = run(argv, capsys)
    assert code == 0 and "resuming" in err
    resumed = _results.read_result(tmp_path / "result.json")
    bundle = tasks.load_task("tracr-reverse")
    whole = jacdc.acdc(bundle.model, bundle.val, 0.001, metric="l2")
    assert [e["present"] for e in resumed["edges"]] == whole.present.tolist()
    assert [(s["edge"], s["removed"]) for s in resumed["steps"]] == [
        (r["edge"], r["removed"]) for r in whole.log
    ]
    # A checkpoint from other settings is refused, not silently mixed in.
    (tmp_path / "checkpoint.jsonl").write_text(
        json.dumps({"kind": "jacdc-acdc-checkpoint", "settings_sha256": "0" * 64}) + "\n"
    )
    code, _, err = run(argv, capsys)
    assert "--fresh" in _one_line_error(code, err)


def test_discover_sp_and_eap_equal_the_library_calls(tmp_path, capsys):
    """`discover --algorithm sp|eap` go through the sharded entry points (for `--devices`); on
    one device they give exactly the library's single-device results, and print the memory
    estimate first."""
    import jax.random as jr

    bundle = tasks.load_task("tracr-proportion")
    metric = bundle.default_metric
    code, out, err = run(
        ["discover", "tracr-proportion", "--algorithm", "sp", "--lambda", "0.1", "--steps", "30",
         "--out", str(tmp_path / "sp"), "--devices", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    assert "jacdc: memory: sp: ~" in err
    doc = _results.read_result(tmp_path / "sp" / "result.json")
    sp = jacdc.subnetwork_probing(
        bundle.model, bundle.val, 0.1, key=jr.key(0), metric=metric, n_steps=30
    )
    np.testing.assert_array_equal([e["present"] for e in doc["edges"]], sp.present)

    # (EAP-IG: plain EAP's gradient of tracr's l2 vanishes, see test_reliability.py.)
    code, out, err = run(
        ["discover", "tracr-proportion", "--algorithm", "eap-ig", "--top-k", "5",
         "--out", str(tmp_path / "eap")],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    assert "jacdc: memory: eap: ~" in err
    doc = _results.read_result(tmp_path / "eap" / "result.json")
    scores = np.array([e["score"] for e in doc["edges"]], np.float64)
    expect = jacdc.eap_ig_scores(bundle.model, bundle.val, metric=metric, steps=5)
    np.testing.assert_allclose(scores, expect, rtol=1e-6, atol=1e-12)
    assert sum(e["present"] for e in doc["edges"]) == 5


def test_discover_layers_option_gives_the_same_circuit(tmp_path, capsys):
    docs = {}
    for layers in ("scan", "unrolled"):
        out_dir = tmp_path / layers
        code, out, err = run(
            ["discover", "tracr-proportion", "--layers", layers, "--out", str(out_dir),
             "--no-progress"],
            capsys,
        )  # fmt: skip
        assert code == 0, out + err
        docs[layers] = _results.read_result(out_dir / "result.json")
        assert docs[layers]["hyperparameters"]["layers"] == layers
    present = {k: [e["present"] for e in d["edges"]] for k, d in docs.items()}
    assert present["scan"] == present["unrolled"] and any(present["scan"])
    with pytest.raises(SystemExit) as exit_info:
        run(["discover", "tracr-proportion", "--layers", "loop"], capsys)
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
