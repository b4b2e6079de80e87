"""Result files: one schema-versioned JSON per run, the mask as `.npz`, a Graphviz rendering.

Every file is written atomically (a temporary file in the same folder, then `os.replace`), so a
killed run never leaves a half-written result. Layout of `result.json` (schema version 1):

| key | meaning |
| --- | --- |
| `schema_version` | 1 |
| `jacdc_version`, `libraries` | versions of jacdc, jax, equinox, numpy |
| `algorithm`, `task`, `model` | names and the model config |
| `hyperparameters` | threshold, metric, ablation, engine, ... |
| `seed` | data seed |
| `metrics` | metric values of the circuit (validation, and test where computed) |
| `n_edges_total`, `n_edges` | graph size and circuit size |
| `edges` | every counted edge: `id`, `name`, `present`, `score` (ACDC: the last tested delta) |
| `steps` | the per-edge step log (ACDC) |
| `timing` | wall time, tests, forward passes, device calls |
"""

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


SCHEMA_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` via a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=_json_default) + "\n").encode())


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    raise TypeError(f"not JSON-serialisable: {type(x)}")


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("jacdc", "jax", "jaxlib", "equinox", "optax", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def circuit_dot(graph, present: np.ndarray, title: str = "") -> str:
    """Graphviz DOT of a circuit: source nodes, receiver nodes, present edges."""
    lines = [
        "digraph circuit {",
        "  rankdir=BT;",
        '  node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="Helvetica"];',
    ]
    if title:
        lines.append(f'  label="{title}"; labelloc=t;')
    for i in np.nonzero(present)[0]:
        e = graph.edges[int(i)]
        color = "#d62728" if e.field == "direct" else "#1f77b4"
        lines.append(f'  "{graph.sender_name(e)}" -> "{graph.receiver_name(e)}" [color="{color}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_result(
    out_dir: str | os.PathLike,
    *,
    algorithm: str,
    task: str,
    model_config: Any,
    graph,
    present: np.ndarray,
    hyperparameters: dict,
    metrics: dict,
    seed: int | None = None,
    scores: np.ndarray | None = None,
    steps: list | None = None,
    timing: dict | None = None,
    extra: dict | None = None,
    stem: str = "result",
) -> dict[str, Path]:
    """Writes `{stem}.json`, `{stem}.npz` (the 0/1 mask per field and per edge id) and
    `{stem}.dot` (plus `{stem}.svg` when Graphviz's `dot` is on PATH) into `out_dir`. Returns the
    paths written."""
    out_dir = Path(out_dir)
    present = np.asarray(present, bool)
    if present.shape != (len(graph),):
        raise ValueError(f"`present` must have shape ({len(graph)},), got {present.shape}.")
    edges = []
    for i, name in enumerate(graph.names):
        rec = {"id": i, "name": name, "present": bool(present[i])}
        if scores is not None:
            s = float(scores[i])
            rec["score"] = s if np.isfinite(s) else None
        edges.append(rec)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "jacdc_version": library_versions()["jacdc"],
        "libraries": library_versions(),
        "algorithm": algorithm,
        "task": task,
        "model": dataclasses.asdict(model_config)
        if dataclasses.is_dataclass(model_config)
        else model_config,
        "graph": dataclasses.asdict(graph.shape),
        "hyperparameters": hyperparameters,
        "seed": seed,
        "metrics": metrics,
        "n_edges_total": len(graph),
        "n_edges": int(present.sum()),
        "edges": edges,
        "steps": steps or [],
        "timing": timing or {},
    }
    if extra:
        doc.update(extra)
    paths = {
        "json": out_dir / f"{stem}.json",
        "npz": out_dir / f"{stem}.npz",
        "dot": out_dir / f"{stem}.dot",
    }
    mask = graph.from_vector(present.astype(np.float32))
    import io

    buf = io.BytesIO()
    np.savez(
        buf,
        present=present,
        **{
            f"mask_{f}": np.asarray(getattr(mask, f))
            for f in ("q", "k", "v", "mlp", "out", "direct")
        },
    )
    atomic_write_bytes(paths["npz"], buf.getvalue())
    dot = circuit_dot(graph, present, f"{task} {algorithm} ({int(present.sum())} edges)")
    atomic_write_bytes(paths["dot"], dot.encode())
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, check=False)
        if svg.returncode == 0:
            paths["svg"] = out_dir / f"{stem}.svg"
            atomic_write_bytes(paths["svg"], svg.stdout)
    atomic_write_json(paths["json"], doc)  # last: its presence means the run is complete
    return paths


def read_result(path: str | os.PathLike) -> dict:
    """Reads a result JSON, checking its schema version."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No result file at {path}.")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); was it written by jacdc?") from None
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {version!r}; this jacdc reads version {SCHEMA_VERSION}."
        )
    return doc
