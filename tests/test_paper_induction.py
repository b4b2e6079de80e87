"""Induction on the original's data files: `torch.save` files read without torch, the
original's splits, labels (the last position scored too), row permutation and metrics; and the
errors for files of the wrong shape, dtype or mask. The files are written here by torch in its
two formats (the hub's own files are not available offline)."""

import sys

import numpy as np
import pytest

import jacdc
from jacdc.tasks import load_task
from jacdc.tasks._induction import (
    PAPER_INDUCTION_FILES,
    load_paper_induction_data,
    make_induction_task,
    make_paper_induction_task,
)
from jacdc.tasks._torch_files import read_torch_tensor
from jacdc.tasks._torch_rng import torch_randperm


ROWS, COLUMNS, SEQ = 7, 13, 12


def paper_like_arrays(seed=0):
    """Tokens `(7, 13)` below the tiny model's vocabulary of 20 and a mask with the last used
    position (11) marked in some rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 20, (ROWS, COLUMNS))
    mask = rng.random((ROWS, COLUMNS)) < 0.4
    mask[0, SEQ - 1] = mask[4, SEQ - 1] = True
    return tokens, mask


def write_paper_files(folder, tokens, mask, *, legacy=False, mask_dtype=None):
    torch = pytest.importorskip("torch")
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"_use_new_zipfile_serialization": not legacy}
    torch.save(torch.as_tensor(tokens), folder / PAPER_INDUCTION_FILES[0], **kwargs)
    mask_tensor = torch.as_tensor(mask if mask_dtype is None else mask.astype(mask_dtype))
    torch.save(mask_tensor, folder / PAPER_INDUCTION_FILES[1], **kwargs)
    return folder


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_files_read_without_torch(tmp_path, monkeypatch, legacy):
    torch = pytest.importorskip("torch")
    cases = {
        "long": torch.arange(12).reshape(3, 4),
        "bool": torch.rand(5, 7) > 0.5,
        "strided": torch.arange(30).reshape(5, 6)[1:4, ::2],  # offset and strides
        "transposed": torch.arange(12).reshape(3, 4).T,
        "float": torch.randn(3, 2),
        "int32": torch.arange(6, dtype=torch.int32),
        "scalar": torch.tensor(5),
        "empty": torch.zeros(0, 3, dtype=torch.long),
    }
    for name, tensor in cases.items():
        torch.save(tensor, tmp_path / name, _use_new_zipfile_serialization=not legacy)
    torch.save({"a": torch.zeros(2)}, tmp_path / "dict", _use_new_zipfile_serialization=not legacy)
    # A storage type this reader does not know goes to torch.load while torch is there.
    complex_tensor = torch.randn(3, dtype=torch.complex64)
    torch.save(complex_tensor, tmp_path / "complex", _use_new_zipfile_serialization=not legacy)
    np.testing.assert_array_equal(read_torch_tensor(tmp_path / "complex"), complex_tensor.numpy())
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    for name, tensor in cases.items():
        array = read_torch_tensor(tmp_path / name)
        expected = tensor.numpy()
        assert array.dtype == expected.dtype and array.shape == expected.shape, name
        np.testing.assert_array_equal(array, expected, err_msg=name)
    with pytest.raises(ValueError, match="holds a dict; expected one tensor"):
        read_torch_tensor(tmp_path / "dict")
    with pytest.raises(ValueError, match="without torch: it holds torch.ComplexFloatStorage"):
        read_torch_tensor(tmp_path / "complex")
    (tmp_path / "junk").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="without torch.*pip install torch==2.13.0"):
        read_torch_tensor(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        read_torch_tensor(tmp_path / "missing")


@pytest.mark.parametrize("legacy", [False, True])
def test_paper_induction_splits(tmp_path, tiny_induction_model, legacy):
    from jacdc.models import clean_run

    tokens, mask = paper_like_arrays()
    folder = write_paper_files(tmp_path / "hub", tokens, mask, legacy=legacy)
    got_tokens, got_mask = load_paper_induction_data(folder)
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_mask, mask)

    b = make_induction_task(tiny_induction_model, data_dir=folder, n_val=3, n_test=3, seq_len=SEQ)
    assert b.info["data"] == "paper" and len(b.info["data_files"]) == 2
    torch = pytest.importorskip("torch")
    torch.manual_seed(42)
    perm = torch.randperm(3).numpy()
    np.testing.assert_array_equal(perm, torch_randperm(3, seed=42))
    for split, rows in ((b.val, slice(0, 3)), (b.test, slice(3, 6))):
        clean = tokens[rows, :SEQ]
        np.testing.assert_array_equal(np.asarray(split.clean), clean)
        np.testing.assert_array_equal(np.asarray(split.corrupted), clean[perm])
        split_mask = mask[rows, :SEQ]
        positions = np.asarray(split.logit_positions)
        np.testing.assert_array_equal(positions, np.nonzero(split_mask.any(0))[0])
        nll = split.metric("nll")
        np.testing.assert_array_equal(nll.targets, tokens[rows, 1 : SEQ + 1][:, positions])
        np.testing.assert_array_equal(nll.weights, split_mask[:, positions])
        np.testing.assert_array_equal(split.metric("kl_div").weights, split_mask[:, positions])
        # The original's NLL: the mean over masked (row, position) of -log p(next token).
        logits = np.asarray(clean_run(b.model, split.clean)[0], np.float64)
        logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        labels = tokens[rows, 1 : SEQ + 1]
        picked = np.take_along_axis(logprobs, labels[..., None], -1)[..., 0]
        expected = -picked[split_mask].mean()
        assert float(nll(logits[:, positions].astype(np.float32))) == pytest.approx(expected, 1e-5)
    assert SEQ - 1 in np.asarray(b.val.logit_positions)  # the last position is scored
    assert b.info["val_scored_positions"] == int(mask[:3, :SEQ].sum())
    full = jacdc.EdgeMask.full(b.model.graph_shape)
    corrupted = jacdc.ablation_sources(b.model, b.val, False)
    assert abs(float(jacdc.metric_of_mask(b.model, b.val, full, corrupted, "kl_div"))) < 1e-5


def test_paper_induction_from_the_weights_folder(tmp_path, tiny_induction_model):
    """The registry finds the files next to the weights, as `hf download` of the hub repo
    leaves them; `data_dir=` overrides."""
    tokens, mask = paper_like_arrays(1)
    folder = write_paper_files(tmp_path / "redwood", tokens, mask)
    assert jacdc.tasks._induction.paper_data_dir(str(folder)) == str(folder)
    (folder / "model.pth").write_bytes(b"")
    assert jacdc.tasks._induction.paper_data_dir(str(folder / "model.pth")) == str(folder)
    b = load_task(
        "induction",
        model=tiny_induction_model,
        data_dir=str(folder),
        n_val=3,
        n_test=3,
        seq_len=SEQ,
    )
    np.testing.assert_array_equal(np.asarray(b.test.clean), tokens[3:6, :SEQ])


def test_paper_induction_errors(tmp_path, tiny_induction_model):
    model = tiny_induction_model
    tokens, mask = paper_like_arrays()
    with pytest.raises(ValueError, match="hf download ArthurConmy/redwood_attn_2l.*data='jacdc'"):
        load_task("induction", weights="random-small")  # no files: fails before any model
    with pytest.raises(ValueError, match="--weights"):
        load_task("induction")
    with pytest.raises(FileNotFoundError, match="missing.*validation_data.pt"):
        load_task("induction", model=model, data_dir=str(tmp_path))
    bad = {
        "wrong dtype": (tokens.astype(np.float32), mask, "2-D integer array.*float32"),
        "wrong shape": (tokens[None], mask[None], r"2-D integer array.*\(1, 7, 13\)"),
        "mask shape": (tokens, mask[:, :-1], r"has shape \(7, 12\).*has \(7, 13\).*mask that"),
        "mask values": (tokens, mask.astype(np.int64) * 2, "must be boolean"),
    }
    for i, (what, (t, m, message)) in enumerate(bad.items()):
        folder = write_paper_files(tmp_path / f"bad{i}", t, m)
        with pytest.raises(ValueError, match=message):
            make_induction_task(model, data_dir=folder, n_val=3, n_test=3, seq_len=SEQ)
    ok = write_paper_files(tmp_path / "ok", tokens, mask.astype(np.uint8), mask_dtype=np.uint8)
    make_induction_task(model, data_dir=ok, n_val=3, n_test=3, seq_len=SEQ)  # 0/1 masks do
    with pytest.raises(ValueError, match="seq_len=13 needs rows of at least 14.*seq_len <= 12"):
        make_induction_task(model, data_dir=ok, n_val=3, n_test=3, seq_len=13)
    with pytest.raises(ValueError, match="7 rows; n_val \\+ n_test = 8"):
        make_paper_induction_task(model, tokens, mask, n_val=4, n_test=4, seq_len=SEQ)
    with pytest.raises(ValueError, match="Tokenizer mismatch"):
        make_paper_induction_task(model, tokens + 20, mask, n_val=3, n_test=3, seq_len=SEQ)
    labels_only = tokens.copy()
    labels_only[:, SEQ] = 20  # out of the vocabulary only in the last position's labels
    with pytest.raises(ValueError, match="Tokenizer mismatch"):
        make_paper_induction_task(model, labels_only, mask, n_val=3, n_test=3, seq_len=SEQ)
    long = np.concatenate([tokens] * 3, axis=1)  # 39 columns; the model's n_ctx is 32
    long_mask = np.concatenate([mask] * 3, axis=1)
    make_paper_induction_task(model, long[:, :33], long_mask[:, :33], n_val=3, n_test=3, seq_len=32)
    with pytest.raises(ValueError, match="33 tokens exceed the model's n_ctx 32"):
        make_paper_induction_task(model, long, long_mask, n_val=3, n_test=3, seq_len=33)


def test_cli_induction_reads_the_paper_files_next_to_the_weights(tmp_path, capsys):
    """`jacdc discover induction --weights FOLDER` with the model and the two data files in one
    folder (as `hf download` of the hub repo leaves them): the paper's 50 + 50 rows of 300
    positions (here on a tiny random 2-layer model), recorded as the task data."""
    import importlib.util
    import pathlib

    from fixtures_lm import lm_config, numpy_random_model

    from jacdc import _cli, _results

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_induction.py"
    spec = importlib.util.spec_from_file_location("_example_train_induction", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    cfg = lm_config(n_layers=2, d_mlp=None, d_vocab=20, n_ctx=300, positional="shortformer")
    folder = tmp_path / "redwood"
    train.save(numpy_random_model(cfg, seed=3), str(folder))
    rng = np.random.default_rng(3)
    tokens, mask = rng.integers(0, 20, (101, 302)), rng.random((101, 302)) < 0.1
    write_paper_files(folder, tokens, mask)
    argv = ["discover", "induction", "--weights", str(folder), "--algorithm", "eap"]
    code = _cli.main(argv + ["--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    doc = _results.read_result(tmp_path / "run" / "result.json")
    assert doc["hyperparameters"]["task_data"] == "paper"
