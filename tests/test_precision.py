"""The matmul precision setting: resolved, applied to every algorithm, recorded."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_hisp import make_tiny

import jacdc
from jacdc import _hisp, _precision
from jacdc.models import clean_run


def test_resolve_default_and_errors():
    assert _precision.resolve(None) == "highest"
    with jax.default_matmul_precision("bfloat16"):
        assert _precision.resolve(None) == "bfloat16"  # an enclosing setting is respected
    with pytest.raises(ValueError, match="Unknown matmul precision 'fast'") as err:
        _precision.resolve("fast")
    assert "\n" not in str(err.value)


def test_public_algorithms_take_precision():
    seen = _precision.with_precision(lambda: jax.config.jax_default_matmul_precision)
    assert seen() == "highest" and seen(precision="high") == "high"
    for fn in (jacdc.acdc, jacdc.acdc_sweep, jacdc.sp_sweep, jacdc.hisp, jacdc.eap_scores):
        assert "precision" in (fn.__doc__ or "")


def _precisions(text):
    return set(re.findall(r"operand_precision=\{([a-z]+),", text))


def test_precision_reaches_the_compiled_computation():
    model, task = make_tiny()
    with _precision.matmul_precision("highest"):
        lowered = clean_run.lower(model, task.clean).as_text()
    assert "precision = [HIGHEST, HIGHEST]" in lowered
    with _precision.matmul_precision("default"):
        lowered = clean_run.lower(model, task.clean).as_text()
    assert "HIGHEST" not in lowered
    # An algorithm: HISP's compiled gradient, one program per setting.
    _hisp._COMPILED.clear()
    a, _ = jacdc.hisp_scores(model, task, metric="logit", precision="highest")
    b, _ = jacdc.hisp_scores(model, task, metric="logit", precision="high")
    texts = [c.as_text() for c in _hisp._COMPILED.values()]
    assert len(texts) == 2
    assert [_precisions(t) for t in texts] == [{"highest"}, {"high"}]
    np.testing.assert_allclose(a, b, rtol=1e-5)  # CPUs compute float32 either way


def test_roc_report_records_precision(tmp_path):
    from jacdc import tasks

    bundle = tasks.load_task("tracr-proportion")
    report = jacdc.roc_report(
        bundle, ["hisp"], zero_ablation=False, metric="l2", out_dir=tmp_path, precision="high"
    )
    assert report["settings"]["precision"] == "high"
    assert report["settings"]["tracr_positions"] == "none"
    assert jnp.isfinite(report["algorithms"]["hisp"]["edge_auc"])
