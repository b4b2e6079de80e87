"""Every algorithm on a model family beyond GPT-2 (issue 12, item 4), through the CLI on a Hugging
Face folder (`--weights FOLDER --dataset FILE`, no built-in task): Gemma-2, the family with the
most features (GQA, post-norms, soft-caps, sliding windows, GeGLU)."""

import json

import numpy as np
import pytest
from hf_helpers import build, save, tokens

import jacdc
from jacdc._cli import main


@pytest.mark.parametrize("algorithm", ["acdc", "sp", "hisp", "eap-ig", "edge-pruning"])
def test_cli_runs_every_algorithm_on_a_gemma2_folder(tmp_path, algorithm, capsys):
    pytest.importorskip("transformers")
    folder = tmp_path / "gemma2"
    save(build("gemma2"), folder, "gemma2")
    clean = tokens(0, batch=4, seq=8)
    data = tmp_path / "data.npz"
    np.savez(data, clean=clean, corrupted=clean[::-1].copy())
    out = tmp_path / "out"
    argv = ["discover", "--weights", str(folder), "--dataset", str(data), "--out", str(out)]
    argv += ["--algorithm", algorithm, "--no-progress"]
    if algorithm in ("sp", "edge-pruning"):
        argv += ["--steps", "4"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"]["post_norms"] is True  # really the Gemma-2 configuration
    assert len(doc["edges"]) == jacdc.GraphShape(n_layers=2, n_heads=4, has_mlp=True).n_edges()
