"""Running a task on the user's own data (`jacdc discover TASK --dataset FILE`).

The file is `.npz` or `.json` with these keys (JSON: nested lists):

| key | shape | required | meaning |
| --- | --- | --- | --- |
| `clean` | `(batch, seq)` int | yes | token ids the metric is computed on |
| `corrupted` | `(batch, seq)` int | yes | token ids of the corrupted run |
| `corrupted_positions` | `(seq,)` / `(batch, seq)` int | no | corrupted-run positions |
| `logit_positions` | `(pos,)` int | no | positions the metric reads |
| `weights` | `(batch, pos)` float | no | per-position weights of the KL / L2 metrics (default 1) |

`corrupted_positions` is a permutation of `range(seq)` (tracr's shuffled positional
embedding; default `arange(seq)`). `logit_positions` defaults to the task's own when `seq`
matches, else the last position. Token ids are the model's own ids (for tracr models:
`bundle.info["input_encoding"]`). The metrics are rebuilt against the model's outputs on your
clean tokens: `kl_div` always, and `l2` for tasks that have it (same output dimensions).
Task-specific metrics that need per-prompt labels (logit difference, ...) are not available for
custom data.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jacdc.tasks import KLMetric, L2Metric, Task, TaskBundle, clean_logits_at, kl_metric


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"Dataset file {path} does not exist.")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}.") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} must hold a JSON object with keys 'clean' and 'corrupted'.")
        return {k: np.asarray(v) for k, v in doc.items()}
    raise ValueError(f"Dataset files must end in .npz or .json, got {path.name!r}.")


def task_from_dataset(path: str, bundle: TaskBundle) -> Task:
    """A [`jacdc.tasks.Task`][] from a user's data file (format in this module's docstring),
    for `bundle`'s model."""
    path = Path(path)
    arrays = _load_arrays(path)
    for key in ("clean", "corrupted"):
        if key not in arrays:
            raise ValueError(
                f"{path}: missing key {key!r}. A dataset file needs 'clean' and 'corrupted' token "
                "arrays of shape (batch, seq) (see `jacdc discover --help`)."
            )
    unknown = set(arrays) - {
        "clean",
        "corrupted",
        "corrupted_positions",
        "logit_positions",
        "weights",
    }
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}.")
    clean, corrupted = arrays["clean"], arrays["corrupted"]
    for key, arr in (("clean", clean), ("corrupted", corrupted)):
        if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{path}: {key!r} must be a non-empty integer array of shape (batch, seq), got "
                f"dtype {arr.dtype} and shape {arr.shape}."
            )
    if clean.shape != corrupted.shape:
        raise ValueError(
            f"{path}: clean and corrupted shapes differ: {clean.shape} vs {corrupted.shape}."
        )
    model = bundle.model
    model.check_token_batch(clean, f"{path.name}: clean")
    model.check_token_batch(corrupted, f"{path.name}: corrupted")
    batch, seq = clean.shape
    cpos = arrays.get("corrupted_positions")
    if cpos is not None:
        cpos = np.asarray(cpos)
        if cpos.ndim == 1:
            cpos = np.broadcast_to(cpos, (batch, seq))
        if cpos.shape != (batch, seq) or sorted(cpos[0].tolist()) != list(range(seq)):
            raise ValueError(
                f"{path}: corrupted_positions must be a permutation of range({seq}) (shape "
                f"({seq},) or ({batch}, {seq})), got shape {cpos.shape}."
            )
        cpos = jnp.asarray(cpos, jnp.int32)
    if "logit_positions" in arrays:
        lpos = np.asarray(arrays["logit_positions"]).reshape(-1)
    elif bundle.val.seq == seq:
        lpos = np.asarray(bundle.val.logit_positions)
    else:
        lpos = np.array([seq - 1])
    if lpos.size == 0 or lpos.min() < 0 or lpos.max() >= seq:
        raise ValueError(f"{path}: logit_positions must lie in [0, {seq}), got {lpos.tolist()}.")
    weights = arrays.get("weights")
    if weights is not None and weights.shape != (batch, lpos.size):
        raise ValueError(
            f"{path}: weights must have shape ({batch}, {lpos.size}), got {weights.shape}."
        )
    clean_j = jnp.asarray(clean, jnp.int32)
    metrics = {"kl_div": kl_metric(model, clean_j, jnp.asarray(lpos), weights)}
    for name, metric in bundle.val.metrics.items():
        if isinstance(metric, L2Metric):
            w = np.ones((batch, lpos.size), np.float32) if weights is None else weights
            if weights is None and np.array_equal(lpos, np.asarray(bundle.val.logit_positions)):
                # Same positions as the task: keep its per-position weights (e.g. skip BOS).
                w = np.broadcast_to(np.asarray(metric.weights[0]), (batch, lpos.size))
            metrics[name] = L2Metric(
                clean_logits=clean_logits_at(model, clean_j, jnp.asarray(lpos)),
                weights=jnp.asarray(w, jnp.float32),
                dims=metric.dims,
            )
        elif isinstance(metric, KLMetric) and name != "kl_div":
            metrics[name] = metrics["kl_div"]
    return Task(
        clean=clean_j,
        corrupted=jnp.asarray(corrupted, jnp.int32),
        corrupted_positions=cpos,
        logit_positions=jnp.asarray(lpos, jnp.int32),
        metrics=metrics,
    )
