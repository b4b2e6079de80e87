"""Every algorithm on every model family (issue 12, item 4): through the Python API on tiny random
models of the five families, and through the CLI on a Hugging Face folder (`--weights FOLDER
--dataset FILE`, no built-in task)."""

import json

import numpy as np
import pytest
from hf_helpers import build, save, tokens
from test_acdc import FAMILY_CONFIGS, make_task

import jacdc
from jacdc._cli import main


EMBEDS = ("blocks.0.hook_resid_pre", "hook_embed", "hook_pos_embed")


# The default suite runs GPT-NeoX (parallel blocks, partial rotary) here; Gemma-2 (GQA,
# post-norms, soft-caps, windows, GeGLU) runs every algorithm through the CLI below, and here
# with `-m slow` (57 s, the suite's longest test), like Llama, Mistral (Llama with windows) and
# Qwen2 (Llama with q/k/v biases). Every family's forward, gradients and ACDC decisions are in
# the default suite through tests/test_scan.py and tests/test_acdc.py.
_SLOW = {"gemma2-like", "llama-like", "mistral-like", "qwen2-like"}


@pytest.mark.parametrize(
    "arch",
    [pytest.param(a, marks=pytest.mark.slow) if a in _SLOW else a for a in sorted(FAMILY_CONFIGS)],
)
def test_every_algorithm_runs_on_every_family(arch):
    model, task = make_task(FAMILY_CONFIGS[arch])
    shape = model.graph_shape
    graph = jacdc.graph_of(shape)

    # EAP-IG with one step (alpha = 1) is EAP: the same gradient at the full mask.
    eap = jacdc.eap_scores(model, task, metric="kl_div", zero_ablation=True, check=False)
    ig1 = jacdc.eap_ig_scores(
        model, task, metric="kl_div", steps=1, zero_ablation=True, check=False
    )
    np.testing.assert_array_equal(eap, ig1)
    ig = jacdc.eap_ig_scores(model, task, metric="kl_div", steps=3, zero_ablation=True)
    assert ig.shape == (len(graph),) and np.all(np.isfinite(ig)) and np.any(ig != 0)

    # HISP: nested circuits from the full graph down to no unit at all, where only the edges
    # that no unit governs (embedding -> output) are left.
    hisp = jacdc.hisp(model, task, metric="kl_div")
    assert hisp.circuits[0].all()
    left = [graph.names[i] for i in np.flatnonzero(hisp.circuits[-1])]
    assert len(left) == shape.n_embed and all(n.split(" <- ")[1] in EMBEDS for n in left)
    assert all(n.startswith(f"blocks.{shape.n_layers - 1}.hook_resid_post") for n in left)
    assert np.all(hisp.circuits[1:] <= hisp.circuits[:-1])
    assert np.all(np.isfinite(hisp.scores))

    # SP and edge pruning train (a few steps) to a finite loss and a valid circuit.
    (sp,) = jacdc.sp_sweep(model, task, [0.1], key=jacdc_key(0), metric="kl_div", n_steps=8)
    assert sp.present.shape == (len(graph),) and np.all(np.isfinite(sp.loss))
    ep = jacdc.edge_pruning(model, task, 0.1, key=jacdc_key(1), metric="kl_div", n_steps=8)
    assert ep.present.shape == (len(graph),) and np.all(np.isfinite(ep.loss))

    # ACDC's circuit reproduces its own final metric when re-evaluated from its edge list.
    result = jacdc.acdc(model, task, threshold=1e-3, metric="kl_div")
    mask = graph.mask_from_edges(result.present_names)
    corrupted = jacdc.ablation_sources(model, task, False)
    value = float(jacdc.metric_of_mask(model, task, mask, corrupted, "kl_div"))
    assert abs(value - result.metric) < 1e-5


def jacdc_key(seed):
    import jax.random as jr

    return jr.key(seed)


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
