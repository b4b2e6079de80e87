"""Invariants every registered task must satisfy, and ACDC end to end on each of them."""

import numpy as np
import pytest

import jacdc
from jacdc import tasks


LM_OPTIONS = {"weights": "random-small", "n_val": 4, "n_test": 4}
EXTRA = {"induction": {"seq_len": 24}}


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
