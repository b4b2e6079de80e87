"""Issue 15: no silent wrong answers, no lost work. Each test is a case the issue lists: it fails
on the code before the fix (a wrong exit-0 result, a traceback, a clobbered folder, a restart
from scratch) and passes with it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import pytest

import jacdc
from jacdc import _cli, _results, _runs, tasks


def run(argv, capsys):
    code = _cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err) -> str:
    assert code == 2, err
    lines = [
        line for line in err.strip().splitlines() if line and not line.startswith("jacdc: memory")
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("jacdc: error:") and "Traceback" not in err
    return lines[0]


def edges_of(path):
    doc = _results.load_result(path)
    return [(e["present"], e["score"]) for e in doc["edges"]], doc


def poisoned(model):
    """`model` with a NaN at the first entry of every floating-point weight."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree.map(lambda x: x.reshape(-1).at[0].set(np.nan).reshape(x.shape), params)
    return eqx.combine(params, static)


# ---- 1. silent wrong results ----------------------------------------------------------------


def test_eap_refuses_a_vanishing_gradient(tracr_reverse):
    """L2 to the model's own outputs is minimal at the full model: EAP's scores are all 0, and
    the old code returned edges 0-4 by id."""
    b = tracr_reverse
    with pytest.raises(jacdc.VanishingGradientError, match="vanishes"):
        jacdc.eap_scores(b.model, b.val, metric="l2")
    # EAP-IG differentiates along the path, where the gradient does not vanish.
    scores = jacdc.eap_ig_scores(b.model, b.val, metric="l2", steps=3)
    assert np.abs(scores).max() > 1e-3


def test_discover_eap_switches_to_eap_ig_and_says_so(tmp_path, capsys, tracr_reverse):
    out = tmp_path / "eap"
    code, _, err = run(["discover", "tracr-reverse", "--algorithm", "eap", "--top-k", "15",
                        "--out", str(out), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert "jacdc: note:" in err and "EAP-IG" in err
    edges, doc = edges_of(out / "result.json")
    assert doc["algorithm"] == "eap-ig" and doc["requested_algorithm"] == "eap"
    assert "EAP-IG" in doc["note"]
    scores = np.array([s for _, s in edges])
    assert np.abs(scores).max() > 1e-3  # not the all-zero scores of EAP
    # The kept edges are the 15 highest |score|, and not the first 15 ids.
    kept = [i for i, (p, _) in enumerate(edges) if p]
    assert kept != list(range(15))
    # An explicit metric whose gradient vanishes is an error, not a meaningless circuit.
    code, _, err = run(["discover", "tracr-reverse", "--algorithm", "eap", "--metric", "l2",
                        "--out", str(tmp_path / "l2")], capsys)  # fmt: skip
    assert "vanishes" in one_line_error(code, err)
    assert not (tmp_path / "l2").exists()


def test_eap_on_ioi_switches_to_the_tasks_own_metric(gpt2_vocab_model, gpt2_tok):
    # IOI's default metric (KL to the model itself) is minimal at the full model: EAP's scores
    # were noise (largest 4e-9). Without --metric, EAP runs with IOI's logit difference instead
    # and says so in the result's note.
    import argparse

    from jacdc._eval import make_ablation
    from jacdc.tasks import load_task

    b = load_task("ioi", model=gpt2_vocab_model, tokenizer=gpt2_tok, n_val=20, n_test=10)
    assert b.default_metric == "kl_div"
    with pytest.raises(jacdc.VanishingGradientError):
        jacdc.eap_scores(b.model, b.val, metric="kl_div")
    args = argparse.Namespace(algorithm="eap", metric=None, devices=None, ig_steps=3)
    ablation = make_ablation("corrupted", None, b.model, None)
    graph = jacdc.graph_of(b.model.graph_shape)
    scores, metric, algorithm, note = _cli._eap_metric_choice(
        args, b, b.val, graph, lambda e: None, ablation
    )
    assert (metric, algorithm) == ("logit_diff", "eap")
    assert "kl_div vanishes" in note and "logit_diff" in note
    np.testing.assert_allclose(
        scores, jacdc.eap_scores(b.model, b.val, metric="logit_diff"), rtol=1e-5, atol=1e-7
    )
    assert np.abs(scores).max() > 1e-4


@pytest.mark.parametrize("algorithm", ["sp", "edge-pruning"])
def test_training_shows_progress(algorithm, tmp_path, capsys):
    out = tmp_path / algorithm
    code, _, err = run(["discover", "tracr-reverse", "--algorithm", algorithm, "--steps", "12",
                        "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert f"{algorithm} tracr-reverse" in err and "12/12" in err and "loss=" in err


@pytest.mark.parametrize(
    "call",
    [
        lambda b: jacdc.subnetwork_probing(
            b.model, b.val, 0.1, key=jr.key(0), metric="l2", n_steps=2
        ),  # fmt: skip
        lambda b: jacdc.edge_pruning(b.model, b.val, 0.1, key=jr.key(0), metric="l2", n_steps=2),
        lambda b: jacdc.hisp(b.model, b.val, metric="l2"),
        lambda b: jacdc.eap_scores(b.model, b.val, metric="kl_div", check=False),
        lambda b: jacdc.eap_ig_scores(b.model, b.val, metric="l2", steps=2),
    ],
    ids=["sp", "edge-pruning", "hisp", "eap", "eap-ig"],
)
def test_nan_weights_are_an_error_for_every_algorithm(call, tracr_reverse):
    import dataclasses

    bad = dataclasses.replace(tracr_reverse, model=poisoned(tracr_reverse.model))
    with pytest.raises(ValueError, match="finite|NaN"):
        call(bad)


@pytest.mark.parametrize("algorithm", ["acdc", "sp", "hisp", "eap", "eap-ig", "edge-pruning"])
def test_cli_refuses_nan_weights(algorithm, tmp_path, capsys, monkeypatch, tracr_reverse):
    real = tasks.load_task

    def load(name, **kw):
        bundle = real(name, **kw)
        import dataclasses

        return dataclasses.replace(bundle, model=poisoned(bundle.model))

    monkeypatch.setattr(tasks, "load_task", load)
    out = tmp_path / algorithm
    code, _, err = run(["discover", "tracr-reverse", "--algorithm", algorithm, "--steps", "2",
                        "--out", str(out), "--no-progress"], capsys)  # fmt: skip
    assert "NaN" in one_line_error(code, err)
    assert not out.exists()


def test_results_are_strict_json(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        _results.atomic_write_json(tmp_path / "x.json", {"metrics": {"kl_div": float("nan")}})
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "nan.json").write_text('{"schema_version": 2, "metrics": {"kl": NaN}}')
    with pytest.raises(ValueError, match="not valid JSON"):
        _results.read_result(tmp_path / "nan.json")


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--algorithm", "eap", "--threshold", "nan"], "--threshold must be a finite number"),
        (["--algorithm", "eap", "--threshold", "-1"], "--threshold must be a finite number"),
        (["--algorithm", "eap-ig", "--top-k", "-1"], "--top-k must be an integer >= 0"),
        (["--algorithm", "eap", "--top-k", "1000"], "--top-k must lie in [0, 106]"),
        (["--algorithm", "hisp", "--top-k", "1000"], "--top-k must lie in"),
        (["--algorithm", "sp", "--lambda", "nan"], "--lambda must be a finite number > 0"),
        (["--algorithm", "edge-pruning", "--lambda", "0"], "--lambda must be a finite number > 0"),
        (["--algorithm", "sp", "--steps", "0"], "--steps must be an integer >= 1"),
        (["--algorithm", "eap-ig", "--ig-steps", "0"], "--ig-steps must be an integer >= 1"),
        (["--algorithm", "sp", "--threshold", "0.1"], "--threshold applies to"),
        (["--threshold", "inf"], "finite and >= 0"),
        (["--seq-len", "12"], "--seq-len does not apply to task 'tracr-reverse'"),
        (["--candidates", "0"], "--candidates must be an integer >= 1"),
    ],
)
def test_numeric_options_are_validated(extra, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(["discover", "tracr-reverse", *extra, "--out", str(out), "--no-progress"],
                       capsys)  # fmt: skip
    assert needle in one_line_error(code, err)
    assert not out.exists()


def test_circuit_from_scores_validates():
    with pytest.raises(ValueError, match="finite"):
        jacdc.circuit_from_scores(np.ones(4), threshold=float("nan"))
    with pytest.raises(ValueError, match=">= 0"):
        jacdc.circuit_from_scores(np.ones(4), threshold=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        jacdc.circuit_from_scores(np.array([1.0, np.nan]), top_k=1)


# ---- checkpoints ------------------------------------------------------------------------------


def _acdc_argv(out, *extra):
    return ["discover", "tracr-reverse", "--threshold", "0.001", "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def test_acdc_checkpoint_is_append_only_and_validated(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("JACDC_TEST_INTERRUPT", "acdc-node:9")
    code, _, err = run(_acdc_argv(out), capsys)
    assert code == 130 and "resume" in err
    monkeypatch.delenv("JACDC_TEST_INTERRUPT")
    ckpt = out / "checkpoint.jsonl"
    lines = ckpt.read_text().splitlines()
    assert len(lines) == 1 + 9  # a header, then one line per finished node
    head = json.loads(lines[0])
    assert head["kind"] == "jacdc-acdc-checkpoint" and len(head["settings_sha256"]) == 64
    assert [json.loads(x)["node"] for x in lines[1:]] == list(range(9))
    # Each line holds only what its node added: no line repeats an earlier line's log.
    logged = [r["edge"] for x in lines[1:] for r in json.loads(x)["states"][0]["log"]]
    assert len(logged) == len(set(logged))

    # A hand-corrupted record (an edge id out of range) is refused, not resumed.
    rec = json.loads(lines[5])
    rec["states"][0]["log"][0]["edge"] = 999
    bad = lines[:5] + [json.dumps(rec)] + lines[6:]
    ckpt.write_text("\n".join(bad) + "\n")
    code, _, err = run(_acdc_argv(out), capsys)
    msg = one_line_error(code, err)
    assert "does not validate" in msg and "999" in msg and "--fresh" in msg
    assert not (out / "result.json").exists()
    # So is an edge that does not enter the node, and a node out of order.
    rec = json.loads(lines[5])
    other = next(i for i in range(106) if i not in {r["edge"] for r in rec["states"][0]["log"]})
    rec["states"][0]["log"][0]["edge"] = other
    ckpt.write_text("\n".join(lines[:5] + [json.dumps(rec)] + lines[6:]) + "\n")
    code, _, err = run(_acdc_argv(out), capsys)
    assert "does not validate" in one_line_error(code, err)

    # A torn last line (a kill mid-write) is dropped; the run resumes to the uninterrupted result.
    ckpt.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    code, _, err = run(_acdc_argv(out), capsys)
    assert code == 0 and "resuming" in err, err
    assert not ckpt.exists()
    resumed, _ = edges_of(out / "result.json")
    code, _, err = run(_acdc_argv(tmp_path / "whole"), capsys)
    assert code == 0
    whole, _ = edges_of(tmp_path / "whole" / "result.json")
    assert resumed == whole


def test_checkpoint_of_other_settings_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("JACDC_TEST_INTERRUPT", "acdc-node:3")
    assert run(_acdc_argv(out), capsys)[0] == 130
    monkeypatch.delenv("JACDC_TEST_INTERRUPT")
    before = (out / "checkpoint.jsonl").read_bytes()
    argv = ["discover", "tracr-reverse", "--threshold", "0.05", "--out", str(out), "--no-progress"]
    code, _, err = run(argv, capsys)
    assert "--fresh" in one_line_error(code, err)
    assert (out / "checkpoint.jsonl").read_bytes() == before  # untouched
    code, _, err = run(argv + ["--fresh"], capsys)
    assert code == 0, err


def test_reference_engine_interrupt_tells_the_truth(tmp_path, capsys, monkeypatch):
    def bar(enabled, total, desc):
        def update(*a):
            raise KeyboardInterrupt

        return update, lambda: None

    monkeypatch.setattr(_cli, "_progress_bar", bar)
    code, _, err = run(_acdc_argv(tmp_path / "ref", "--engine", "reference"), capsys)
    assert code == 130 and "starts over" in err and "resume from" not in err


# ---- 2. crashes ---------------------------------------------------------------------------


def test_roc_runs_without_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["roc", "tracr-reverse", "--algorithms", "hisp"], capsys)
    assert code == 0, err
    assert "| hisp |" in out
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("tracr-reverse-roc-l2-corrupted-")
    assert (folder / "roc-tracr-reverse-l2-random.json").exists()
    assert "jacdc: roc: hisp" in err  # progress


def _result_doc(tmp_path, capsys):
    out = tmp_path / "ok"
    code, _, err = run(["discover", "tracr-reverse", "--algorithm", "hisp", "--out", str(out),
                        "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    return out / "result.json", json.loads((out / "result.json").read_text())


def test_load_result_rejects_bad_files(tmp_path, capsys):
    path, doc = _result_doc(tmp_path, capsys)
    assert _results.load_result(path)["n_edges_total"] == 106
    cases = {
        "no-graph": ({k: v for k, v in doc.items() if k != "graph"}, "no `graph`"),
        "bad-id": ({**doc, "edges": [dict(e, id=e["id"] + 500) for e in doc["edges"]]}, "id"),
        "short": ({**doc, "edges": doc["edges"][:-1]}, "must list all 106"),
        "present": ({**doc, "edges": [dict(e, present=1) for e in doc["edges"]]}, "boolean"),
        "shape": ({**doc, "graph": {**doc["graph"], "n_layers": -1}}, "graph"),
    }
    for label, (bad, needle) in cases.items():
        p = tmp_path / f"{label}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError) as info:
            _results.load_result(p)
        assert needle in str(info.value), label
        code, _, err = run(["draw", str(p), "--format", "dot"], capsys)
        assert needle in one_line_error(code, err), label
        assert not (tmp_path / f"{label}.dot").exists()


# ---- 3. lost or overwritten work ---------------------------------------------------------------


def _default_dir(argv):
    args = _cli._parser().parse_args(argv)
    spec = tasks.get_task(args.task)
    if args.command == "sweep":
        return _cli._out_dir(args, _cli._acdc_settings(args, args.thresholds, spec), ["s"])[0]
    if args.algorithm == "acdc":
        t = args.threshold or 0.01
        return _cli._out_dir(args, _cli._acdc_settings(args, [t], spec), ["a"])[0]
    return _cli._out_dir(args, *_cli._other_settings(args, spec))[0]


def test_default_folders_differ_for_every_setting(tmp_path):
    base = ["discover", "tracr-reverse"]
    data = [tmp_path / "a.npz", tmp_path / "b.npz"]
    np.savez(data[0], clean=np.zeros((2, 5), int), corrupted=np.zeros((2, 5), int))
    np.savez(data[1], clean=np.ones((2, 5), int), corrupted=np.zeros((2, 5), int))
    variants = [
        base,
        base + ["--threshold", "0.02"],
        base + ["--zero-ablation"],
        base + ["--metric", "kl_div"],
        base + ["--abs-value"],
        base + ["--dataset", str(data[0])],
        base + ["--dataset", str(data[1])],  # same name pattern, other content
        base + ["--seed", "1"],
        base + ["--n-val", "10"],
        base + ["--weights", "random"],
        base + ["--algorithm", "sp"],
        base + ["--algorithm", "sp", "--lambda", "0.5"],
        base + ["--algorithm", "sp", "--steps", "10"],
        base + ["--algorithm", "edge-pruning"],
        base + ["--algorithm", "eap", "--top-k", "5"],
        base + ["--algorithm", "eap", "--top-k", "6"],
        base + ["--algorithm", "eap", "--threshold", "0.1"],
        base + ["--algorithm", "hisp", "--top-k", "3"],
        ["sweep", "tracr-reverse", "--thresholds", "0.0010001", "0.0010002"],
        ["sweep", "tracr-reverse", "--thresholds", "0.0010001", "0.0010003"],
    ]
    folders = [_default_dir(v) for v in variants]
    assert len(set(folders)) == len(folders)
    assert _default_dir(base) == _default_dir(base + ["--metric", "l2"])  # l2 is the default


def test_close_sweep_thresholds_get_their_own_files(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run(["sweep", "tracr-proportion", "--thresholds", "0.0010001", "0.0010002",
                        "--out", str(out), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert len({r["result"] for r in runs}) == 2
    for r in runs:
        assert (
            _results.load_result(out / r["result"])["hyperparameters"]["threshold"]
            == r["threshold"]
        )
    code, _, err = run(["sweep", "tracr-proportion", "--thresholds", "0.01", "0.01",
                        "--out", str(tmp_path / "dup")], capsys)  # fmt: skip
    assert "more than once" in one_line_error(code, err)


def test_finished_run_is_not_overwritten_and_stale_files_go(tmp_path, capsys):
    out = tmp_path / "run"
    sweep = ["sweep", "tracr-proportion", "--thresholds", "0.001", "0.01", "--out", str(out),
             "--no-progress"]  # fmt: skip
    assert run(sweep, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = ["discover", "tracr-proportion", "--out", str(out), "--no-progress"]
    code, _, err = run(other, capsys)
    assert "--overwrite" in one_line_error(code, err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    code, _, err = run(other + ["--overwrite"], capsys)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert "result.json" in names
    assert not [n for n in names if n.startswith("tau") or n == "sweep.json"]  # stale: removed
    # The same settings again: allowed (it is the same run), and the result is the same.
    first = (out / "result.json").read_text()
    assert run(other, capsys)[0] == 0
    strip = lambda d: {k: v for k, v in json.loads(d).items() if k != "timing"}  # noqa: E731
    assert strip((out / "result.json").read_text()) == strip(first)


def test_two_concurrent_runs_one_refuses(tmp_path):
    """Process A takes the folder's lock and holds it (test hook: it waits for a line on
    stdin); process B, started while A holds it, must refuse. No timing decides anything."""
    out = tmp_path / "shared"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JACDC_TYPECHECK="0")
    argv = [sys.executable, "-m", "jacdc", "discover", "tracr-proportion", "--algorithm", "hisp",
            "--out", str(out), "--no-progress"]  # fmt: skip
    a = subprocess.Popen(argv, env=dict(env, JACDC_TEST_HOLD_LOCK="1"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert a.stdout.readline().startswith("jacdc-test: locked")
        b = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert b.returncode == 2, b.stderr
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another jacdc run" in lines[0]
        assert f"pid {a.pid}" in lines[0]
        a.stdin.write("\n")
        a.stdin.flush()
        out_a, err_a = a.communicate()
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, err_a
    assert _results.load_result(out / "result.json")["task"] == "tracr-proportion"


def test_files_are_created_0644(tmp_path):
    old = os.umask(0o022)
    try:
        _results.atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_split_and_length_options_reach_the_task(tmp_path, capsys):
    out = tmp_path / "ind"
    code, _, err = run(["discover", "induction", "--weights", "random-small", "--data", "jacdc",
                        "--algorithm", "hisp", "--n-val", "3", "--n-test", "2", "--seq-len", "16",
                        "--out", str(out), "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    doc = _results.load_result(out / "result.json")
    assert doc["hyperparameters"]["n_val"] == 3 and doc["hyperparameters"]["n_test"] == 2
    assert doc["settings"]["seq_len"] == 16


# ---- 4. resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sp", "edge-pruning"])
def test_training_killed_and_rerun_gives_the_uninterrupted_result(
    algorithm, tmp_path, capsys, monkeypatch
):
    argv = ["discover", "tracr-proportion", "--algorithm", algorithm, "--lambda", "0.3",
            "--steps", "30", "--checkpoint-every", "10", "--no-progress"]  # fmt: skip
    killed = tmp_path / "killed"
    monkeypatch.setenv("JACDC_TEST_INTERRUPT", "train-chunk:2")
    code, _, err = run(argv + ["--out", str(killed)], capsys)
    assert code == 130 and "resume" in err
    monkeypatch.delenv("JACDC_TEST_INTERRUPT")
    with np.load(killed / "train-checkpoint.npz") as z:
        assert int(z["step"]) == 20
    assert not (killed / "result.json").exists()
    code, _, err = run(argv + ["--out", str(killed)], capsys)
    assert code == 0 and "resuming" in err and "step 20" in err, err
    assert not (killed / "train-checkpoint.npz").exists()
    code, _, err = run(argv + ["--out", str(tmp_path / "whole")], capsys)
    assert code == 0, err
    resumed, doc_r = edges_of(killed / "result.json")
    whole, doc_w = edges_of(tmp_path / "whole" / "result.json")
    assert resumed == whole
    assert doc_r["metrics"] == doc_w["metrics"] and doc_r["training"] == doc_w["training"]


def test_roc_killed_and_rerun_gives_the_uninterrupted_report(tmp_path, capsys, monkeypatch):
    argv = ["roc", "tracr-reverse", "--algorithms", "hisp,eap-ig,eap", "--no-progress"]
    killed = tmp_path / "killed"
    monkeypatch.setenv("JACDC_TEST_INTERRUPT", "roc-algorithm:2")
    code, _, err = run(argv + ["--out", str(killed)], capsys)
    assert code == 130 and "resume" in err
    monkeypatch.delenv("JACDC_TEST_INTERRUPT")
    assert sorted(p.name for p in (killed / "roc-parts").iterdir()) == ["eap-ig.json", "hisp.json"]
    code, _, err = run(argv + ["--out", str(killed)], capsys)
    assert code == 0, err
    assert not (killed / "roc-parts").exists()
    code, _, err = run(argv + ["--out", str(tmp_path / "whole")], capsys)
    assert code == 0, err
    name = "roc-tracr-reverse-l2-random.json"

    def strip(doc):
        for e in doc["algorithms"].values():
            e.pop("wall_time")
        doc.pop("files")
        return doc

    resumed = strip(json.loads((killed / name).read_text()))
    whole = strip(json.loads((tmp_path / "whole" / name).read_text()))
    assert resumed == whole


# ---- 5. docs true to the code ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["acdc", "sp", "hisp", "eap-ig", "edge-pruning"])
def test_one_result_schema_for_every_algorithm(algorithm, tmp_path, capsys):
    bundle = tasks.load_task("tracr-proportion")
    data = tmp_path / "data.npz"
    np.savez(data, clean=np.asarray(bundle.val.clean), corrupted=np.asarray(bundle.val.corrupted))
    # The --dataset variant (no test split) for two algorithms only, to keep the test short.
    for dataset in (None, data) if algorithm in ("acdc", "hisp") else (None,):
        out = tmp_path / f"{algorithm}-{dataset is not None}"
        extra = ["--dataset", str(data)] if dataset else []
        code, _, err = run(["discover", "tracr-proportion", "--algorithm", algorithm, "--steps",
                            "5", "--out", str(out), "--no-progress", *extra], capsys)  # fmt: skip
        assert code == 0, err
        doc = _results.load_result(out / "result.json")
        assert doc["schema_version"] == 2
        for key in ("settings", "settings_sha256", "score_kind", "dataset", "metrics", "edges"):
            assert key in doc, key
        assert all("score" in e for e in doc["edges"])
        assert any(e["score"] is not None for e in doc["edges"])
        assert set(doc["metrics"]["validation"]) == set(doc["metrics"]["full_model"]["validation"])
        if dataset is None:
            assert set(doc["metrics"]["test"]) == set(bundle.test.metrics)
            assert doc["dataset"] == {"path": None, "sha256": None}
        else:
            assert doc["metrics"]["test"] is None
            sha = _runs.file_sha256(data)
            assert doc["dataset"]["sha256"] == sha == doc["hyperparameters"]["dataset_sha256"]


def test_sp_and_hisp_edge_scores_reproduce_their_circuits():
    """SP/HISP edge scores come from unit scores so that thresholding them is the circuit."""
    from jacdc._sp import edge_scores_from_units, units_from_vector

    shape = tasks.load_task("tracr-proportion").model.graph_shape
    rng = np.random.default_rng(0)
    n_units = len(jacdc.unit_names(shape))
    for _ in range(5):
        values = rng.normal(size=n_units)
        scores = edge_scores_from_units(shape, units_from_vector(shape, values))
        for t in np.quantile(values, [0.1, 0.5, 0.9]):
            keep = units_from_vector(shape, values >= t, fill=True)
            np.testing.assert_array_equal(scores >= t, jacdc.circuit_from_units(shape, keep))


def test_version_help_and_did_you_mean(capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"jacdc {jacdc.__version__}"
    with pytest.raises(SystemExit):
        _cli.main(["discover", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1.0)" in text and "(default: 3000)" in text and "random-small" in text
    code, _, err = run(["discover", "tracr-revers"], capsys)
    assert "Did you mean 'tracr-reverse'?" in one_line_error(code, err)
    code, _, err = run(["discover", "tracr-reverse", "--metric", "l3", "--out", "/nonexistent/x"],
                       capsys)  # fmt: skip
    assert "Did you mean 'l2'?" in one_line_error(code, err)
    code, _, err = run(["roc", "tracr-reverse", "--algorithms", "acdc,hsip"], capsys)
    assert "Did you mean 'hisp'?" in one_line_error(code, err)


def test_readme_command_summary_is_complete():
    """Every option of discover/sweep/roc appears in the README's command summary."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    summary = readme.split("## Command line", 1)[1].split("```", 2)[1]
    parser = _cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("discover", "sweep", "roc", "draw"):
        for action in sub.choices[name]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in summary, (name, flag)
    assert "random-small" in summary and "--version" in summary


def test_train_induction_documented_command_runs(tmp_path, capsys):
    """The `jacdc discover induction --weights FOLDER ...` line of examples/train_induction.py
    works on a folder that script writes (here an untrained model of its config, saved by its
    `save`; HISP instead of ACDC to keep the test short)."""
    import importlib.util
    import shlex

    path = Path(__file__).parents[1] / "examples" / "train_induction.py"
    spec = importlib.util.spec_from_file_location("train_induction", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    folder = tmp_path / "induction_2l"
    example.save(jacdc.models.Transformer(example.induction_config(), key=jr.key(0)), str(folder))
    line = next(x for x in example.__doc__.splitlines() if "jacdc discover induction" in x)
    argv = shlex.split(line.split("#")[0])[1:]
    argv = [str(folder) if a == "/tmp/induction_2l" else a for a in argv]
    argv += ["--algorithm", "hisp", "--n-val", "4", "--n-test", "4", "--no-progress"]
    code, _, err = run(argv + ["--out", str(tmp_path / "run")], capsys)
    assert code == 0, err


def test_task_too_large_for_memory_stops_before_it_is_built(tmp_path, capsys, monkeypatch):
    """`discover induction --weights random-small` used to be killed by the system while the
    task's clean logits were built (before any estimate); now the build checks first. The free
    memory is patched to 1 GiB so the verdict does not depend on this machine."""
    from jacdc import _device_memory

    monkeypatch.setattr(_device_memory, "device_memory", lambda device=None: (2**30, "test"))
    out = tmp_path / "big"
    code, _, err = run(["discover", "induction", "--weights", "random-small", "--data", "jacdc",
                        "--out", str(out), "--no-progress"], capsys)  # fmt: skip
    msg = one_line_error(code, err)
    assert "GiB" in msg and "--seq-len" in msg and "--n-val" in msg
    assert not out.exists()


def test_checkpoint_decisions_must_follow_from_their_numbers(tmp_path, capsys, monkeypatch):
    """A record whose `removed` flag was flipped by hand (numbers intact) is refused too."""
    out = tmp_path / "run"
    monkeypatch.setenv("JACDC_TEST_INTERRUPT", "acdc-node:6")
    assert run(_acdc_argv(out), capsys)[0] == 130
    monkeypatch.delenv("JACDC_TEST_INTERRUPT")
    ckpt = out / "checkpoint.jsonl"
    lines = ckpt.read_text().splitlines()
    for n in range(1, len(lines)):
        rec = json.loads(lines[n])
        tested = [r for r in rec["states"][0]["log"] if not r["skipped"]]
        if tested:
            tested[0]["removed"] = not tested[0]["removed"]
            lines[n] = json.dumps(rec)
            break
    else:
        raise AssertionError("no tested edge in the first nodes")
    ckpt.write_text("\n".join(lines) + "\n")
    code, _, err = run(_acdc_argv(out), capsys)
    assert "contradicts" in one_line_error(code, err)
