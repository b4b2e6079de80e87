"""The token-array reader behind `--dataset` (`jacdc.tasks.read_token_dataset`,
`from_arrays`): its bad inputs (issue 15), each a one-line error with exit code 2."""

import numpy as np
import pytest

from jacdc import _cli, tasks


@pytest.fixture(scope="module")
def reverse():
    bundle = tasks.load_task("tracr-reverse")
    clean = np.asarray(bundle.val.clean)
    corrupted = np.asarray(bundle.val.corrupted)
    return bundle, clean, corrupted


def _cli_error(path, tmp_path, capsys) -> str:
    out = tmp_path / "out"
    code = _cli.main(["discover", "tracr-reverse", "--dataset", str(path), "--out", str(out),
                      "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("jacdc: error:"), err
    assert "Traceback" not in err and not out.exists()
    return lines[0]


def _cases(clean, corrupted):
    b, s = clean.shape
    perm = np.tile(np.arange(s), (b, 1))
    bad_perm = perm.copy()
    bad_perm[1, 0] = bad_perm[1, 1]  # row 1 repeats a position; row 0 is fine
    w = np.ones((b, s), np.float32)
    nan_w, neg_w = w.copy(), w.copy()
    nan_w[0, 0] = np.nan
    neg_w[1, 2] = -0.5
    return {
        "nan_weights": (dict(weights=nan_w, logit_positions=np.arange(s)), "NaN/inf"),
        "all_nan_weights": (
            dict(weights=np.full((b, s), np.nan), logit_positions=np.arange(s)),
            "NaN/inf",
        ),  # fmt: skip
        "negative_weights": (dict(weights=neg_w, logit_positions=np.arange(s)), ">= 0"),
        "zero_weights": (dict(weights=0 * w, logit_positions=np.arange(s)), "every weight is 0"),
        "rows_not_permutations": (dict(corrupted_positions=bad_perm), "row 1 is not a permutation"),
        "float_logit_positions": (dict(logit_positions=np.array([1.0, 2.5])), "must be integers"),
    }


@pytest.mark.parametrize("case", list(_cases(np.zeros((2, 5), int), None)))
def test_bad_arrays(reverse, tmp_path, capsys, case):
    bundle, clean, corrupted = reverse
    extra, needle = _cases(clean, corrupted)[case]
    with pytest.raises(ValueError, match=needle.replace("/", ".")):
        tasks.from_arrays(bundle.model, clean, corrupted, like=bundle.val, **extra)
    path = tmp_path / "data.npz"
    np.savez(path, clean=clean, corrupted=corrupted, **extra)
    assert needle in _cli_error(path, tmp_path, capsys)


def test_truncated_and_empty_files(reverse, tmp_path, capsys):
    _, clean, corrupted = reverse
    good = tmp_path / "good.npz"
    np.savez(good, clean=clean, corrupted=corrupted)
    data = good.read_bytes()
    for name, content in (("truncated.npz", data[: len(data) // 2]), ("zero.npz", b""),
                          ("zero.json", b""), ("garbage.npz", b"not a zip at all")):  # fmt: skip
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError):
            tasks.read_token_dataset(path)
        msg = _cli_error(path, tmp_path, capsys)
        assert name in msg and ("empty" in msg or "not a readable .npz" in msg), msg
    arrays = tasks.read_token_dataset(good)
    assert sorted(arrays) == ["clean", "corrupted"]


def test_good_arrays_still_work(reverse):
    bundle, clean, corrupted = reverse
    s = clean.shape[1]
    w = np.ones((clean.shape[0], s), np.float32)
    w[:, 0] = 0.0
    task = tasks.from_arrays(bundle.model, clean, corrupted, logit_positions=np.arange(s),
                             weights=w, corrupted_positions=np.arange(s)[::-1].copy(),
                             like=bundle.val)  # fmt: skip
    assert sorted(task.metrics) == sorted(bundle.val.metrics)
    assert np.asarray(task.corrupted_positions).shape == clean.shape


def test_cli_mean_ablation_with_a_reference_file(reverse, tmp_path, capsys):
    import json

    import jacdc

    bundle, clean, corrupted = reverse
    ref = tmp_path / "ref.npz"
    np.savez(ref, clean=corrupted, corrupted=corrupted)  # average over the corrupted prompts
    out = tmp_path / "out"
    argv = ["discover", "tracr-reverse", "--ablation", "mean", "--mean-reference", str(ref)]
    code = _cli.main(argv + ["--out", str(out), "--no-progress", "--engine", "reference"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    assert doc["hyperparameters"]["ablation"] == {"kind": "mean", "reference": "ref.npz"}
    mine = jacdc.acdc(bundle.model, bundle.val, 0.01, metric="l2", engine="reference",
                      ablation=jacdc.Ablation("mean", corrupted))  # fmt: skip
    assert [e["present"] for e in doc["edges"]] == mine.present.tolist()
    code = _cli.main(["discover", "tracr-reverse", "--ablation", "mean", "--zero-ablation",
                      "--out", str(tmp_path / "x")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "contradicts" in err and not (tmp_path / "x").exists()
