"""Sharded runs give the results of one device.

The 8-device checks run in a subprocess: this process already started JAX with one CPU device,
and the device count is fixed when JAX starts. The subprocess sets
`XLA_FLAGS=--xla_force_host_platform_device_count=8` before importing JAX, computes every result
once unsharded (on device 0, i.e. a one-device run) and once on a mesh of all 8 devices, and
prints the comparisons as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacdc
from jacdc import _memory, _sharding


EIGHT_DEVICES = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import numpy as np

    import jacdc
    from jacdc import _sharding as sh
    from jacdc.models import Transformer, TransformerConfig
    from jacdc.tasks import LogitDiffMetric, Task, kl_metric

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    cfg = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                            n_ctx=6)
    d, e, H, m = 8, 4, 2, 16
    normal = lambda *s, std=0.3: (std * rng.standard_normal(s)).astype(np.float32)
    ln = lambda: (1 + normal(d, std=0.1), normal(d, std=0.1))
    blocks = [dict(ln1=ln(), w_q=normal(H, d, e), b_q=normal(H, e), w_k=normal(H, d, e),
                   b_k=normal(H, e), w_v=normal(H, d, e), b_v=normal(H, e),
                   w_o=normal(H, e, d), b_o=normal(d), ln2=ln(), w_in=normal(d, m),
                   b_in=normal(m), w_out=normal(m, d), b_out=normal(d)) for _ in range(2)]
    model = Transformer.from_params(cfg, w_e=normal(11, d, std=1.0), w_pos=normal(6, d),
                                    blocks=blocks, ln_final=ln(), w_u=normal(d, 11),
                                    b_u=normal(11))
    B = 8
    tokens = jnp.asarray(rng.integers(0, 11, (B, 5)), jnp.int32)
    positions = jnp.array([3, 4])
    task = Task(clean=tokens, corrupted=tokens[::-1], corrupted_positions=None,
                logit_positions=positions,
                metrics={"kl_div": kl_metric(model, tokens, positions),
                         "logit_diff": LogitDiffMetric(
                             correct=jnp.asarray(rng.integers(0, 11, B), jnp.int32),
                             wrong=jnp.asarray(rng.integers(0, 11, B), jnp.int32))})
    out = {}

    # ACDC: batch over 4 devices, the 8 candidates (shared by 3 thresholds) over 2.
    taus = [3e-3, 1e-2, 3e-2]
    one = jacdc.acdc_sweep(model, task, taus, metric="kl_div", candidates=8)
    mesh = sh.make_mesh(8, batch=B, lanes=2)
    many = sh.sharded_acdc_sweep(model, task, taus, metric="kl_div", mesh=mesh, candidates=8)
    out["acdc"] = {
        "mesh": dict(mesh.shape),
        "same_decisions": [a.decisions == b.decisions for a, b in zip(one, many)],
        "same_present": [bool(np.array_equal(a.present, b.present)) for a, b in zip(one, many)],
        "metric_diff": max(abs(a.metric - b.metric) for a, b in zip(one, many)),
        "delta_diff": max(abs(ra["after"] - rb["after"]) for a, b in zip(one, many)
                          for ra, rb in zip(a.log, b.log)),
        "n_edges": [a.n_edges for a in one],
        "n_removed": [sum(r["removed"] for r in a.log) for a in one],
    }
    # Banded, with the tail's per-stage evaluators (what large models run), on the same mesh.
    banded = sh.sharded_acdc_sweep(model, task, taus, metric="kl_div", mesh=mesh, candidates=8,
                                   bands=True)
    out["acdc"]["banded_same_decisions"] = [a.decisions == b.decisions
                                            for a, b in zip(one, banded)]

    # EAP: the batch over all 8 devices; logit difference (KL has zero gradient at the clean
    # model).
    one = jacdc.eap_scores(model, task, metric="logit_diff")
    many = sh.sharded_eap_scores(model, task, metric="logit_diff", devices=8)
    out["eap"] = {"max_diff": float(np.max(np.abs(one - many))),
                  "max_abs": float(np.max(np.abs(one))),
                  "same_top": bool(np.array_equal(
                      jacdc.circuit_from_scores(one, top_k=20),
                      jacdc.circuit_from_scores(many, top_k=20)))}

    # SP: the batch over 4 devices, 3 lambdas (padded to 4) over 2.
    lams = [0.01, 0.3, 3.0]
    one = jacdc.sp_sweep(model, task, lams, key=jr.key(0), metric="kl_div", n_steps=10)
    many = sh.sharded_sp_sweep(model, task, lams, key=jr.key(0), metric="kl_div", n_steps=10,
                               mesh=mesh)
    out["sp"] = {
        "n": len(many),
        "same_present": [bool(np.array_equal(a.present, b.present)) for a, b in zip(one, many)],
        "metric_diff": max(float(np.max(np.abs(a.metric - b.metric))) for a, b in zip(one, many)),
        "log_alpha_diff": max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                              for a, b in zip(one, many)
                              for x, y in zip(jax.tree.leaves(a.log_alpha),
                                              jax.tree.leaves(b.log_alpha))),
    }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_device_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_acdc_on_8_devices_equals_one(eight_device_results):
    r = eight_device_results["acdc"]
    assert r["mesh"] == {"batch": 4, "lane": 2}
    assert all(r["same_decisions"]) and all(r["same_present"])
    assert all(r["banded_same_decisions"]) and len(r["banded_same_decisions"]) == 3
    assert r["metric_diff"] < 1e-5 and r["delta_diff"] < 1e-5
    assert any(r["n_removed"]) and any(n > 0 for n in r["n_edges"])  # a non-trivial run


def test_eap_on_8_devices_equals_one(eight_device_results):
    r = eight_device_results["eap"]
    assert r["max_abs"] > 1e-3  # the scores are not all zero
    assert r["max_diff"] < 1e-5 * max(1.0, r["max_abs"])
    assert r["same_top"]


def test_sp_on_8_devices_equals_one(eight_device_results):
    r = eight_device_results["sp"]
    assert r["n"] == 3  # the padding lambda is dropped
    assert all(r["same_present"])
    assert r["metric_diff"] < 1e-5 and r["log_alpha_diff"] < 1e-5


# ---- one device (this process) ------------------------------------------------------------


@pytest.mark.parametrize(
    "n, batch, expected",
    [(8, 100, (4, 2)), (8, 8, (8, 1)), (8, 6, (2, 4)), (8, 7, (1, 8)), (1, 5, (1, 1)),
     (6, None, (6, 1))],
)  # fmt: skip
def test_split_devices(n, batch, expected):
    assert _sharding.split_devices(n, batch) == expected


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="Asked for 3 devices"):
        _sharding.make_mesh(3)
    with pytest.raises(ValueError, match="must divide"):
        _sharding.make_mesh(1, lanes=2)
    mesh = _sharding.make_mesh(1, batch=5)
    assert _sharding.mesh_shape(mesh) == (1, 1)
    assert _sharding.lane_candidates(5, mesh) == 5


def _tiny(batch=4):
    from jacdc.models import Transformer, TransformerConfig
    from jacdc.tasks import Task, kl_metric

    cfg = TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                            n_ctx=6)  # fmt: skip
    model = Transformer(cfg, key=jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (batch, 5)), jnp.int32)
    positions = jnp.array([4])
    task = Task(clean=tokens, corrupted=tokens[::-1], corrupted_positions=None,
                logit_positions=positions,
                metrics={"kl_div": kl_metric(model, tokens, positions)})  # fmt: skip
    return model, task


def test_shard_task_places_batch_leaves():
    model, task = _tiny()
    mesh = _sharding.make_mesh(1, batch=task.batch)
    sharded = _sharding.shard_task(task, mesh)
    assert sharded.clean.sharding.spec[0] == _sharding.BATCH
    assert sharded.metrics["kl_div"].clean_logprobs.sharding.spec[0] == _sharding.BATCH
    assert sharded.logit_positions.sharding.spec == jax.sharding.PartitionSpec()
    assert bool(eqx_equal(sharded, task))


def eqx_equal(a, b):
    import equinox as eqx

    return eqx.tree_equal(a, b)


def test_bf16_sources_run_close_to_float32():
    model, task = _tiny()
    one = jacdc.acdc(model, task, 1e-2, metric="kl_div", suffix=True)
    half = _sharding.sharded_acdc_sweep(
        model, task, [1e-2], metric="kl_div", devices=1, source_dtype=jnp.bfloat16, suffix=True
    )[0]
    assert half.n_tests > 0
    assert abs(half.initial_metric - one.initial_metric) < 1e-2
    src = _sharding.sources_to_dtype(jacdc.ablation_sources(model, task, False))
    assert src.resid.dtype == jnp.bfloat16
    assert _memory.acdc_memory(
        model.cfg, task.batch, task.seq, candidates=4, source_dtype=jnp.bfloat16
    ).parts["corrupted sources"] == _memory.source_bytes(model.cfg, task.batch, task.seq, 2)


def test_memory_check_stops_a_run_that_cannot_fit(monkeypatch):
    model, task = _tiny()
    monkeypatch.setattr(_memory, "device_memory", lambda device=None: (1000, "test"))
    with pytest.raises(_memory.MemoryBudgetError, match="Not enough memory"):
        _sharding.sharded_acdc_sweep(model, task, [1e-2], metric="kl_div", devices=1)


# ---- two processes (multi-host through jax.distributed, on CPU) -----------------------------

TWO_PROCESSES = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jacdc import _sharding as sh
    info = sh.initialize_distributed(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    import jax.numpy as jnp, jax.random as jr, numpy as np
    import jacdc
    from jacdc.models import Transformer, TransformerConfig
    from jacdc.tasks import LogitDiffMetric, Task, kl_metric

    rng = np.random.default_rng(0)  # the same data in every process
    cfg = TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=11,
                            n_ctx=6)
    with jax.default_device(jax.local_devices()[0]):
        model = Transformer(cfg, key=jr.key(0))
        B = 8
        tokens = jnp.asarray(rng.integers(0, 11, (B, 5)), jnp.int32)
        pos = jnp.array([4])
        task = Task(clean=tokens, corrupted=tokens[::-1], corrupted_positions=None,
                    logit_positions=pos,
                    metrics={"kl_div": kl_metric(model, tokens, pos),
                             "logit_diff": LogitDiffMetric(
                                 correct=jnp.asarray(rng.integers(0, 11, B), jnp.int32),
                                 wrong=jnp.asarray(rng.integers(0, 11, B), jnp.int32))})
        eap_one = jacdc.eap_scores(model, task, metric="logit_diff")
        sp_one = jacdc.sp_sweep(model, task, [0.1, 1.0, 3.0], key=jr.key(0), metric="kl_div",
                                n_steps=5)
        acdc_one = jacdc.acdc_sweep(model, task, [0.03, 0.3], metric="kl_div", candidates=4)
    eap = sh.sharded_eap_scores(model, task, metric="logit_diff", mesh=sh.make_mesh(batch=B))
    sp = sh.sharded_sp_sweep(model, task, [0.1, 1.0, 3.0], key=jr.key(0), metric="kl_div",
                             n_steps=5, mesh=sh.make_mesh(batch=B, lanes=2))
    acdc = sh.sharded_acdc_sweep(model, task, [0.03, 0.3], metric="kl_div", candidates=4,
                                 mesh=sh.make_mesh(batch=B, lanes=2))
    print("RESULT " + json.dumps({
        "acdc_same": [a.decisions == b.decisions for a, b in zip(acdc_one, acdc)],
        "acdc_diff": max(abs(a.metric - b.metric) for a, b in zip(acdc_one, acdc)),
        "acdc_removed": [sum(r["removed"] for r in a.log) for a in acdc_one],
        "devices": info["global_devices"],
        "eap_diff": float(np.abs(eap_one - eap).max()),
        "sp_same": all(bool(np.array_equal(a.present, b.present)) for a, b in zip(sp_one, sp)),
        "sp_diff": max(float(np.abs(a.metric - b.metric).max()) for a, b in zip(sp_one, sp)),
    }))
    """
)


@pytest.mark.slow
def test_two_processes_give_the_one_device_results(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    script = tmp_path / "worker.py"
    script.write_text(TWO_PROCESSES)
    procs = [
        subprocess.Popen([sys.executable, str(script), f"localhost:{port}", str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        result = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
        assert result["devices"] == 8
        assert result["eap_diff"] < 1e-5 and result["sp_same"] and result["sp_diff"] < 1e-5
        assert all(result["acdc_same"]) and result["acdc_diff"] < 1e-5
        assert any(result["acdc_removed"])  # a non-trivial run
