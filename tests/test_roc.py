import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import PROPORTION, REVERSE

import jacdc
from jacdc._roc import rates


DATA = Path(__file__).parents[2] / "shared" / "data" / "paper-roc-points"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"the paper's stored ROC points are not at {DATA}"
)

# Reference §8 (paper Appendix E, Tables 2 and 3), typed in by hand:
# (method, task, metric, zero ablation) -> (edge AUC, node AUC). Columns: metric kind, task,
# HISP (E), SP (E), HISP (N), SP (N). The "Loss" rows are the task-specific metrics.
_RANDOM = """
KL docstring 0.805 0.937 0.881 0.928
KL greaterthan 0.693 0.806 0.642 0.827
KL ioi 0.789 0.823 0.668 0.842
Loss docstring 0.821 0.942 0.889 0.941
Loss greaterthan 0.706 0.812 0.631 0.811
Loss ioi 0.836 0.707 0.728 0.797
L2 tracr-proportion 0.679 0.525 0.909 0.818
L2 tracr-reverse 0.577 0.193 0.750 0.375
"""
_ZERO = """
KL docstring 0.805 0.428 0.881 0.420
KL greaterthan 0.693 0.163 0.642 0.134
KL ioi 0.792 0.486 0.671 0.605
Loss docstring 0.821 0.482 0.889 0.398
Loss greaterthan 0.706 0.639 0.631 0.522
Loss ioi 0.836 0.393 0.728 0.479
L2 tracr-proportion 0.679 0.829 0.909 1.000
L2 tracr-reverse 0.577 0.801 0.750 1.000
"""
_LOSS = {"docstring": "docstring_metric", "greaterthan": "greaterthan", "ioi": "logit_diff"}


def _expected():
    table = {}
    for text, zero in ((_RANDOM, False), (_ZERO, True)):
        for line in text.strip().splitlines():
            kind, task, hisp_e, sp_e, hisp_n, sp_n = line.split()
            metric = {"KL": "kl_div", "L2": "l2"}.get(kind, _LOSS.get(task))
            table[("16h", task, metric, zero)] = (float(hisp_e), float(hisp_n))
            table[("sp", task, metric, zero)] = (float(sp_e), float(sp_n))
    return table


EXPECTED = _expected()


def _load(path: Path) -> dict:
    d = json.loads(path.read_text())
    while "edge_fpr" not in d:
        (d,) = d.values()
    return d


def test_expected_table_covers_every_stored_file():
    assert len(EXPECTED) == 32
    if DATA.is_dir():
        files = sorted(p.name for p in DATA.glob("*.json") if "induction" not in p.name)
        want = sorted(f"{m}-{t}-{metric}-{z}-0.json" for (m, t, metric, z) in EXPECTED)
        assert files == want


@needs_data
@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_reproduces_published_auc(key):
    method, task, metric, zero = key
    d = _load(DATA / f"{method}-{task}-{metric}-{zero}-0.json")
    edge_auc = jacdc.pessimistic_auc(d["edge_fpr"], d["edge_tpr"])
    node_auc = jacdc.pessimistic_auc(d["node_fpr"], d["node_tpr"])
    assert (round(edge_auc, 3), round(node_auc, 3)) == EXPECTED[key]


def test_auc_sanity_values():
    assert jacdc.pessimistic_auc([0.5], [0.5]) == pytest.approx(0.25)
    assert jacdc.pessimistic_auc([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert jacdc.pessimistic_auc([], []) == pytest.approx(0.0)
    assert jacdc.pessimistic_auc([0.0], [1.0]) == pytest.approx(1.0)
    assert jacdc.trapezoid_auc([0.5], [0.5]) == pytest.approx(0.5)
    assert jacdc.trapezoid_auc([], []) == pytest.approx(0.5)
    assert jacdc.trapezoid_auc([0.0], [1.0]) == pytest.approx(1.0)
    # Step curve: right first, then up.
    assert jacdc.pessimistic_auc([0.2, 0.6], [0.5, 0.9]) == pytest.approx(
        0.8 * 0.5 + 0.4 * 0.4 + 0.0 * 0.1
    )


def test_pareto_filter_drops_dominated_points():
    # (0.5, 0.4) is beaten by (0.3, 0.6): strictly lower FPR and strictly higher TPR.
    fpr, tpr = jacdc.roc_curve([0.3, 0.5, 0.5, 0.3, float("nan")], [0.6, 0.4, 0.7, 0.6, 0.1])
    pts = list(zip(fpr.tolist(), tpr.tolist()))
    assert (0.5, 0.4) not in pts
    assert pts == [(0.0, 0.0), (0.3, 0.6), (0.3, 0.6), (0.5, 0.7), (1.0, 1.0)]
    # Equal FPR or equal TPR does not dominate.
    fpr, tpr = jacdc.roc_curve([0.3, 0.3, 0.4], [0.5, 0.6, 0.6])
    assert list(zip(fpr.tolist(), tpr.tolist())) == [
        (0.0, 0.0),
        (0.3, 0.5),
        (0.3, 0.6),
        (0.4, 0.6),
        (1.0, 1.0),
    ]
    # A dominated point does not lower the AUC.
    assert jacdc.pessimistic_auc([0.2, 0.5], [0.8, 0.3]) == pytest.approx(
        jacdc.pessimistic_auc([0.2], [0.8])
    )


SHAPES = {
    "gpt2": (jacdc.GraphShape(12, 12, True, 1), 32923, 1022),
    "attn-only-4l": (jacdc.GraphShape(4, 8, False, 1), 1377, 226),
    "redwood-attn-2l": (jacdc.GraphShape(2, 8, False, 1), 305, 114),
    "tracr-reverse": (jacdc.GraphShape(4, 1, True, 2), 106, 35),
    "tracr-proportion": (jacdc.GraphShape(2, 1, True, 2), 38, 19),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_node_universe_sizes(name):
    shape, n_edges, n_nodes = SHAPES[name]
    assert len(jacdc.graph_of(shape)) == n_edges
    names = jacdc.node_names(shape)
    assert len(names) == n_nodes == len(set(names))
    assert not any("mlp_in" in n for n in names)
    # The full circuit touches every node; the empty one none.
    assert jacdc.present_nodes(shape, np.ones(n_edges, bool)).all()
    assert not jacdc.present_nodes(shape, np.zeros(n_edges, bool)).any()


# (task, n counted edges, n nodes, canonical edges, canonical nodes), reference §1.3 and §4.
_UNIVERSE = {
    "ioi": (32923, 1022, 1041, 196),
    "greaterthan": (32923, 1022, 262, 77),
    "docstring": (1377, 226, 37, 34),
    "tracr-reverse": (106, 35, 15, 16),
    "tracr-proportion": (38, 19, 10, 11),
}


@needs_data
@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: "-".join(map(str, k)))
def test_stored_points_fit_the_universes(key):
    # Every stored (TPR, FPR) is consistent with our edge and node universes: the circuit sizes
    # recomputed from the rates equal the stored n_edges / n_nodes.
    method, task, metric, zero = key
    d = _load(DATA / f"{method}-{task}-{metric}-{zero}-0.json")
    n_e, n_n, p_e, p_n = _UNIVERSE[task]
    for i in range(len(d["score"])):
        if isinstance(d["n_edges"][i], float) and math.isnan(d["n_edges"][i]):
            continue
        edges = d["edge_tpr"][i] * p_e + d["edge_fpr"][i] * (n_e - p_e)
        nodes = d["node_tpr"][i] * p_n + d["node_fpr"][i] * (n_n - p_n)
        assert edges == pytest.approx(d["n_edges"][i], abs=1e-6)
        assert nodes == pytest.approx(d["n_nodes"][i], abs=1e-6)


@pytest.mark.parametrize(
    "name, edges, n_nodes",
    [("tracr-reverse", REVERSE, 16), ("tracr-proportion", PROPORTION, 11)],
)
def test_canonical_tracr_counts(name, edges, n_nodes):
    shape = SHAPES[name][0]
    graph = jacdc.graph_of(shape)
    truth = np.zeros(len(graph), bool)
    truth[[graph.edge_id(e) for e in edges]] = True
    assert truth.sum() == len(edges)
    assert jacdc.present_nodes(shape, truth).sum() == n_nodes
    result = jacdc.roc(shape, edges, truth[None])
    assert result.edge_auc == result.node_auc == 1.0
    assert result.n_edges.tolist() == [len(edges)] and result.n_nodes.tolist() == [n_nodes]


def test_node_presence_rules():
    shape = SHAPES["tracr-reverse"][0]
    graph = jacdc.graph_of(shape)
    names = jacdc.node_names(shape)

    def nodes(*edges):
        present = np.zeros(len(graph), bool)
        present[[graph.edge_id(e) for e in edges]] = True
        return {names[i] for i in np.nonzero(jacdc.present_nodes(shape, present))[0]}

    # A direct edge marks the q input and the q node, not the result node.
    assert nodes("blocks.1.attn.hook_q[0] <- blocks.1.hook_q_input[0]") == {
        "blocks.1.hook_q_input[0]",
        "blocks.1.attn.hook_q[0]",
    }
    # An edge into an MLP input marks only its sender (mlp_in is not in the universe).
    assert nodes("blocks.2.hook_mlp_in <- blocks.0.attn.hook_result[0]") == {
        "blocks.0.attn.hook_result[0]"
    }
    assert nodes("blocks.3.hook_v_input[0] <- blocks.1.hook_mlp_out") == {
        "blocks.1.hook_mlp_out",
        "blocks.3.hook_v_input[0]",
    }
    assert nodes("blocks.3.hook_resid_post <- hook_pos_embed") == {
        "hook_pos_embed",
        "blocks.3.hook_resid_post",
    }


def test_roc_of_a_sweep():
    shape = SHAPES["tracr-proportion"][0]
    graph = jacdc.graph_of(shape)
    truth = np.zeros(len(graph), bool)
    truth[[graph.edge_id(e) for e in PROPORTION]] = True
    rng = np.random.default_rng(0)
    circuits = rng.random((7, len(graph))) < 0.5
    result = jacdc.roc(shape, PROPORTION, circuits)
    fpr, tpr = rates(truth, circuits)
    np.testing.assert_allclose(result.edge_fpr, fpr)
    np.testing.assert_allclose(result.edge_tpr, tpr)
    assert result.edge_auc == pytest.approx(jacdc.pessimistic_auc(fpr, tpr))
    assert result.edge_auc <= result.edge_auc_trapezoid
    # Scores that rank the canonical edges first give a perfect edge ROC.
    ks, top = jacdc.top_k_circuits(truth.astype(float))
    assert ks.tolist() == list(range(len(graph) + 1))
    assert jacdc.roc(shape, truth, top).edge_auc == 1.0
    with pytest.raises(ValueError, match="some but not all"):
        jacdc.roc(shape, np.zeros(len(graph), bool), circuits)
    with pytest.raises(ValueError, match="circuit"):
        jacdc.roc(shape, PROPORTION, circuits[:, :5])


def test_top_k_circuits_large_graph_uses_a_grid():
    scores = np.arange(2000, dtype=float)
    ks, circuits = jacdc.top_k_circuits(scores, max_circuits=100)
    assert ks[0] == 0 and ks[-1] == 2000 and len(ks) <= 100
    assert (circuits.sum(1) == ks).all()
    assert circuits[1, -1] and not circuits[1, 0]  # the highest score first


# ---- roc_report ---------------------------------------------------------------------------


def _toy_bundle(canonical=True):
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    from jacdc.models import Transformer, TransformerConfig
    from jacdc.tasks import AbstractMetric, Task, TaskBundle

    class LogitMetric(AbstractMetric):
        token: int = eqx.field(static=True)

        def per_example(self, logits):
            return -logits[:, :, self.token].mean(-1)

    cfg = TransformerConfig(
        n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11, n_ctx=6
    )
    model = Transformer(cfg, key=jr.key(0), init_std=0.5)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 11, (4, 6)), jnp.int32)
    task = Task(
        clean=tokens,
        corrupted=tokens[::-1],
        corrupted_positions=None,
        logit_positions=jnp.array([4, 5]),
        metrics={"logit": LogitMetric(3)},
    )
    names = jacdc.graph_of(model.graph_shape).names
    return TaskBundle(
        name="toy",
        model=model,
        val=task,
        test=task,
        default_metric="logit",
        canonical=[names[i] for i in (0, 5, 17, 30, 57)] if canonical else None,
    )


@pytest.fixture(scope="module")
def toy_bundle():
    return _toy_bundle()


def test_roc_report_writes_files(toy_bundle, tmp_path, monkeypatch):
    from jacdc import _acdc

    graph = jacdc.graph_of(toy_bundle.model.graph_shape)
    calls = []

    class FakeResult:
        def __init__(self, threshold, present):
            self.threshold, self.present = threshold, present

    def fake_acdc_sweep(model, task, thresholds, *, metric, zero_ablation):
        calls.append((list(thresholds), metric, zero_ablation))
        rng = np.random.default_rng(0)
        return [FakeResult(t, rng.random(len(graph)) < 0.3) for t in thresholds]

    monkeypatch.setattr(_acdc, "acdc_sweep", fake_acdc_sweep)
    lines = []
    report = jacdc.roc_report(
        toy_bundle,
        ["acdc", "hisp", "eap", "eap-ig"],
        zero_ablation=True,
        metric=None,
        out_dir=tmp_path / "out",
        sweeps={"acdc": [0.1, 0.01]},
        eap_ig_steps=1,
        log=lines.append,
    )
    assert calls == [([0.1, 0.01], "logit", True)]
    assert set(report["algorithms"]) == {"acdc", "hisp", "eap", "eap-ig"}
    assert report["canonical_edges"] == 5 and report["n_edges"] == len(graph) == 58
    for name, entry in report["algorithms"].items():
        assert 0 <= entry["edge_auc"] <= entry["edge_auc_trapezoid"] <= 1, name
        assert 0 <= entry["node_auc"] <= 1
        assert entry["published"] is None
    n_units = len(jacdc.unit_names(toy_bundle.model.graph_shape))
    assert len(report["algorithms"]["hisp"]["points"]["edge_fpr"]) == n_units + 1
    assert len(report["algorithms"]["eap"]["points"]["edge_fpr"]) == len(graph) + 1
    # EAP-IG with one step is EAP.
    assert report["algorithms"]["eap"]["edge_auc"] == report["algorithms"]["eap-ig"]["edge_auc"]
    assert len([line for line in lines if "AUC" in line]) == 4
    assert len([line for line in lines if line.endswith("...")]) == 4  # progress: each start
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    stem = "roc-toy-logit-zero"
    assert files == [f"{stem}.{s}" for s in ("json", "md", "png", "svg")]  # no temp files left
    on_disk = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
    assert on_disk["algorithms"]["hisp"]["edge_auc"] == report["algorithms"]["hisp"]["edge_auc"]
    md = (tmp_path / "out" / f"{stem}.md").read_text()
    assert "| hisp |" in md and "| acdc |" in md
    assert (tmp_path / "out" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"


def test_roc_report_errors(toy_bundle, tmp_path):
    with pytest.raises(ValueError, match="Unknown algorithm"):
        jacdc.roc_report(
            toy_bundle, ["acdc", "magic"], zero_ablation=False, metric=None, out_dir=tmp_path
        )
    with pytest.raises(ValueError, match="No algorithm"):
        jacdc.roc_report(toy_bundle, [], zero_ablation=False, metric=None, out_dir=tmp_path)
    with pytest.raises(ValueError, match="Unknown metric"):
        jacdc.roc_report(toy_bundle, ["hisp"], zero_ablation=False, metric="nope", out_dir=tmp_path)
    import dataclasses

    no_canonical = dataclasses.replace(toy_bundle, canonical=None)
    with pytest.raises(ValueError, match="no canonical circuit"):
        jacdc.roc_report(no_canonical, ["hisp"], zero_ablation=False, metric=None, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_published_table():
    from jacdc._roc_report import PUBLISHED

    assert PUBLISHED[("tracr-reverse", "L2", True)]["sp"] == (0.801, 1.0)
    assert PUBLISHED[("ioi", "KL", False)]["acdc"] == (0.869, 0.880)
    assert len(PUBLISHED) == 16
