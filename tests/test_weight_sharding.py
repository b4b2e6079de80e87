"""Weights sharded over a mesh's "model" axis give one device's results.

The 8-device checks run in a subprocess (the device count is fixed when JAX starts; this process
has one CPU device): it sets `XLA_FLAGS=--xla_force_host_platform_device_count=8`, builds tiny
`transformers` models (GQA Llama, parallel GPT-NeoX), loads them, and compares the unsharded
model (device 0) with the same model after `shard_weights` on a `batch=2 x model=4` mesh:
placements, logits, and the ACDC metric and decisions through the public `jacdc.acdc_sweep` (both
ablations, three thresholds), printed as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jacdc.models import model_mesh, shard_weights, weight_partition_specs


pytest.importorskip("torch")
pytest.importorskip("transformers")

EIGHT_DEVICES = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jacdc
    from jacdc.models import clean_run, load_hf, model_mesh, shard_weights
    from jacdc.tasks import Task, kl_metric

    sys.path.insert(0, sys.argv[1])
    import hf_helpers as H

    assert jax.device_count() == 8, jax.devices()
    mesh = model_mesh(8, batch=2)
    out = {}
    for name in ("llama", "neox"):
        folder = tempfile.mkdtemp()
        H.save(H.build(name), folder, name)
        model = load_hf(folder)
        sharded = shard_weights(model, mesh)
        blk, sblk = model.blocks[0], sharded.blocks[0]
        shard_shape = lambda x: list(x.addressable_shards[0].data.shape)
        r = {
            "w_q": [list(blk.w_q.shape), shard_shape(sblk.w_q)],
            "w_k": [list(blk.w_k.shape), shard_shape(sblk.w_k)],
            "w_in": [list(blk.w_in.shape), shard_shape(sblk.w_in)],
            "w_out": [list(blk.w_out.shape), shard_shape(sblk.w_out)],
            "w_u": [list(model.w_u.shape), shard_shape(sharded.w_u)],
            "n_devices_w_q": len(sblk.w_q.sharding.device_set),
        }
        tokens = jnp.asarray(H.tokens(7, batch=6))
        one = np.asarray(jax.jit(lambda m, t: clean_run(m, t)[0])(model, tokens))
        many = np.asarray(jax.jit(lambda m, t: clean_run(m, t)[0])(sharded, tokens))
        r["logit_diff"] = float(np.abs(one - many).max())
        direct = load_hf(folder, mesh=mesh)  # host -> shards, never all on one device
        r["direct_same"] = all(
            x.sharding.is_equivalent_to(y.sharding, x.ndim) and bool(np.array_equal(x, y))
            for x, y in zip(jax.tree.leaves(sharded), jax.tree.leaves(direct))
        )
        r["logit_scale"] = float(np.abs(one).max())
        positions = jnp.array([9, 10, 11])
        task = Task(clean=tokens, corrupted=tokens[::-1], corrupted_positions=None,
                    logit_positions=positions,
                    metrics={"kl_div": kl_metric(model, tokens, positions)})
        for zero in (False, True) if name == "llama" else ():
            taus = [3e-3, 1e-2, 3e-2]
            a = jacdc.acdc_sweep(model, task, taus, metric="kl_div", zero_ablation=zero)
            b = jacdc.acdc_sweep(sharded, task, taus, metric="kl_div", zero_ablation=zero)
            r[f"acdc_zero={zero}"] = {
                "same_decisions": [x.decisions == y.decisions for x, y in zip(a, b)],
                "same_present": [bool(np.array_equal(x.present, y.present)) for x, y in zip(a, b)],
                "metric_diff": max(abs(x.metric - y.metric) for x, y in zip(a, b)),
                "n_removed": [sum(e["removed"] for e in x.log) for x in a],
                "n_edges": [x.n_edges for x in a],
            }
        out[name] = r
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def eight_device_results():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    tests = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES, tests], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def test_weights_are_split_over_the_model_axis(eight_device_results):
    llama, neox = eight_device_results["llama"], eight_device_results["neox"]
    # 4 query heads over model=4: one head per device; 2 kv heads do not split: replicated
    assert llama["w_q"] == [[4, 32, 8], [1, 32, 8]]
    assert llama["w_k"] == [[2, 32, 8], [2, 32, 8]]
    assert llama["w_in"] == [[32, 40], [32, 10]] and llama["w_out"] == [[40, 32], [10, 32]]
    assert llama["w_u"] == [[32, 61], [32, 61]]  # 61 is prime: replicated
    assert neox["w_k"] == [[4, 32, 8], [1, 32, 8]]  # no GQA: kv heads split too
    assert llama["n_devices_w_q"] == 8  # split over model, replicated over batch
    # load_hf(mesh=...) places the same way, straight from the host
    assert llama["direct_same"] and neox["direct_same"]


@pytest.mark.parametrize("name", ["llama", "neox"])
def test_sharded_logits_equal_one_device(eight_device_results, name):
    r = eight_device_results[name]
    assert r["logit_scale"] > 1.0
    assert r["logit_diff"] <= 1e-5 * r["logit_scale"]


@pytest.mark.parametrize("zero", [False, True])
def test_sharded_acdc_equals_one_device(eight_device_results, zero):
    """`jacdc.acdc_sweep` on the sharded GQA model: the same decisions at three thresholds."""
    r = eight_device_results["llama"][f"acdc_zero={zero}"]
    assert all(r["same_decisions"]) and all(r["same_present"])
    assert r["metric_diff"] < 1e-5
    assert max(r["n_removed"]) > 0 and min(r["n_edges"]) > 0  # real decisions, both ways


@pytest.mark.unchecked
def test_partition_specs_need_a_model_axis():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
    with pytest.raises(ValueError, match="no 'model' axis"):
        weight_partition_specs(None, mesh)


def test_one_device_mesh_is_a_no_op(getkey):
    from jacdc.models import Transformer, TransformerConfig

    cfg = TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_mlp=16, d_vocab=10,
                            n_ctx=6)  # fmt: skip
    model = Transformer(cfg, key=getkey())
    sharded = shard_weights(model, model_mesh(1))
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
