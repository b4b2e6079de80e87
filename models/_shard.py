"""Weights sharded over a device mesh, for models too large for one device (Llama-3.1-8B in
bf16 is 16 GB of weights; with float32 activations and ACDC's source buffers it outgrows one
accelerator).

[`shard_weights`][] places every weight of a [`jacdc.models.Transformer`][] with a
[`jax.sharding.NamedSharding`][] that splits one axis over the mesh's `"model"` axis (Megatron's
tensor parallelism, expressed as data placement):

| weights | split axis |
| --- | --- |
| `w_q (H, d, e)`, `b_q (H, e)`, `w_o (H, e, d)` | query heads |
| `w_k, w_v (K, d, e)`, `b_k, b_v (K, e)` | key/value heads |
| `w_in, w_gate (d, m)`, `b_in, b_gate (m,)`, `w_out (m, d)` | MLP hidden units |
| `w_e (V, d)`, `w_u (d, V)`, `b_u (V,)` | vocabulary |
| norms, `b_o`, `b_out`, `w_pos` | replicated (small) |

An axis that the mesh's `"model"` size does not divide is replicated instead (e.g. Qwen2.5's 2
key/value heads over 4 devices), so any model runs on any mesh. Nothing in the forward pass or the
algorithms changes: jit's SPMD partitioner sees the input layouts and splits the computation
(each device computes its own heads and hidden units; the residual-stream writes are summed
across devices). Results equal one device's up to the order of floating-point sums (about 1e-7
relative).

Use a mesh with a `"model"` axis, e.g. [`model_mesh`][] (`("batch", "model")`, batch size 1 by
default), and call any algorithm on the returned model (`jacdc.acdc`, `jacdc.eap_scores`, ...).
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._transformer import Transformer


__all__ = ["MODEL_AXIS", "model_mesh", "shard_params", "shard_weights", "weight_partition_specs"]

MODEL_AXIS = "model"

# field -> the axis split over "model" (by the field's name in `Transformer` / `Block`); what the
# axis counts, for the docs: heads, kv heads, hidden units, vocabulary.
_SPLIT = {
    "w_q": 0,
    "b_q": 0,
    "w_o": 0,
    "w_k": 0,
    "b_k": 0,
    "w_v": 0,
    "b_v": 0,
    "w_in": 1,
    "w_gate": 1,
    "b_in": 0,
    "b_gate": 0,
    "w_out": 0,
    "w_e": 0,
    "w_u": 1,
    "b_u": 0,
}


def model_mesh(devices: int | Sequence | None = None, *, batch: int = 1) -> Mesh:
    """A mesh with axes `("batch", "model")`: `batch` devices on the batch axis, the rest of
    `devices` (default: all of `jax.devices()`; or a count, or a list) on the model axis."""
    available = jax.devices()
    if devices is None:
        devs = list(available)
    elif isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"Asked for {devices} devices, but JAX sees {len(available)}; pass between 1 and "
                f"{len(available)}."
            )
        devs = list(available[: int(devices)])
    else:
        devs = list(devices)
    if batch < 1 or len(devs) % batch:
        raise ValueError(f"batch={batch} must divide the device count {len(devs)}.")
    grid = np.array(devs, dtype=object).reshape(batch, len(devs) // batch)
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return Mesh(grid, ("batch", MODEL_AXIS))
    return Mesh(grid, ("batch", MODEL_AXIS), axis_types=(axis_type.Auto,) * 2)


def _spec(name: str | None, x, n: int) -> P:
    axis = _SPLIT.get(name)
    if axis is None or n == 1 or x.ndim <= axis or x.shape[axis] % n:
        return P()
    return P(*([None] * axis), MODEL_AXIS)


def weight_partition_specs(model: Transformer, mesh: Mesh, axis: str = MODEL_AXIS):
    """The [`jax.sharding.PartitionSpec`][] of every weight of `model` on `mesh` (a pytree like
    `model`, `None` at non-array leaves): see the module docs for which axis is split."""
    if axis not in mesh.axis_names:
        raise ValueError(
            f"The mesh has axes {mesh.axis_names}, no {axis!r} axis to shard the weights over; "
            "build one with `jacdc.models.model_mesh`."
        )
    n = int(mesh.shape[axis])

    def one(path, x):
        if not isinstance(x, (jax.Array, np.ndarray)):
            return None
        name = getattr(path[-1], "name", None) if path else None
        spec = _spec(name, x, n)
        if axis != MODEL_AXIS and spec != P():
            spec = P(*(axis if s == MODEL_AXIS else s for s in spec))
        return spec

    return jax.tree_util.tree_map_with_path(one, model)


def shard_weights(model: Transformer, mesh: Mesh, axis: str = MODEL_AXIS) -> Transformer:
    """`model` with every weight placed on `mesh`: heads, MLP hidden units and vocabulary split
    over `axis` where its size divides them, the rest replicated over the whole mesh.

    **Arguments:**

    - `model`: a [`jacdc.models.Transformer`][] (any weight dtype; kept).
    - `mesh`: a [`jax.sharding.Mesh`][] with an axis named `axis` (e.g. [`model_mesh`][]).
    - `axis`: the mesh axis to split over (default `"model"`).

    **Returns:** the same model, its arrays now global `jax.Array`s on `mesh` (each device holds
    `1 / mesh.shape[axis]` of the split weights).
    """
    specs = weight_partition_specs(model, mesh, axis)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    spec_leaves = treedef.flatten_up_to(specs)
    placed = [
        x if spec is None else jax.device_put(x, NamedSharding(mesh, spec))
        for x, spec in zip(leaves, spec_leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, placed)


def shard_params(params, mesh: Mesh, axis: str = MODEL_AXIS, dtype=None):
    """The `Transformer.from_params` keyword arguments (a dict of host arrays, `blocks` a list of
    dicts) placed on `mesh` by the same rules as [`shard_weights`][], straight from the host:
    each device receives only its shards, so a model larger than one device never lands on one.
    `dtype`: cast every floating array to it first (e.g. `ml_dtypes.bfloat16`)."""
    if axis not in mesh.axis_names:
        raise ValueError(
            f"The mesh has axes {mesh.axis_names}, no {axis!r} axis to shard the weights over; "
            "build one with `jacdc.models.model_mesh`."
        )
    n = int(mesh.shape[axis])

    def one(path, x):
        if not isinstance(x, (jax.Array, np.ndarray)):
            return x
        if dtype is not None and np.issubdtype(np.asarray(x).dtype, np.floating):
            x = np.asarray(x).astype(dtype)
        key = getattr(path[-1], "key", None) if path else None
        spec = _spec(key if isinstance(key, str) else None, x, n)
        if axis != MODEL_AXIS and spec != P():
            spec = P(*(axis if s == MODEL_AXIS else s for s in spec))
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(one, params)
