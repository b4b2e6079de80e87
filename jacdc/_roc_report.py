"""ROC report: run circuit-discovery algorithms on a task and score them against its canonical
circuit, edge- and node-level, as in the ACDC paper (reference §6, §8).

Each algorithm produces a sweep of circuits on the task's *validation* split:

| algorithm | sweep (defaults) | ROC "score" of a circuit |
| --- | --- | --- |
| `acdc` | thresholds: tracr `10^linspace(-5, -1, 21)`; other tasks the paper's grids (§6) | tau |
| `sp` | lambda: the paper's grid for the task and metric (§5.1), 10,000 Adam steps | lambda |
| `hisp` | every prefix of the pruning order (no hyperparameters) | cumulative prune score |
| `eap`, `eap-ig` | top-k of `|score|` for every k (or ~512 sizes on big graphs) | k |
| `edge-pruning` | lambda `10^linspace(-3, 1, 9)`, 2,000 Adam steps, lr 0.05 | lambda |

The report (a dict) is also written to `out_dir` as JSON and Markdown (atomically: a temporary
file in the same folder, then `os.replace`), with a ROC plot as PNG and SVG.
"""

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax.random as jr
import numpy as np

from ._graph import graph_of
from ._results import file_mode
from ._roc import as_edge_vector, node_names, present_nodes, roc, top_k_circuits


ALGORITHMS = ("acdc", "sp", "hisp", "eap", "eap-ig", "edge-pruning")

# Reference §8 (Appendix E, Tables 2 and 3): (task, metric kind, zero ablation) ->
# algorithm -> (edge AUC, node AUC). Metric kind: "KL", "Loss" (the task metric) or "L2".
PUBLISHED: dict[tuple[str, str, bool], dict[str, tuple[float, float]]] = {}


def _published(rows: str, zero: bool) -> None:
    for line in rows.strip().splitlines():
        kind, task, *v = line.split()
        a = [float(x) for x in v]
        PUBLISHED[(task, kind, zero)] = {
            "acdc": (a[0], a[3]),
            "hisp": (a[1], a[4]),
            "sp": (a[2], a[5]),
        }


_published(
    """
KL docstring 0.982 0.805 0.937 0.950 0.881 0.928
KL greater-than 0.853 0.693 0.806 0.890 0.642 0.827
KL ioi 0.869 0.789 0.823 0.880 0.668 0.842
Loss docstring 0.972 0.821 0.942 0.938 0.889 0.941
Loss greater-than 0.461 0.706 0.812 0.766 0.631 0.811
Loss ioi 0.589 0.836 0.707 0.777 0.728 0.797
L2 tracr-proportion 0.679 0.679 0.525 0.750 0.909 0.818
L2 tracr-reverse 0.200 0.577 0.193 0.312 0.750 0.375
""",
    zero=False,
)
_published(
    """
KL docstring 0.906 0.805 0.428 0.837 0.881 0.420
KL greater-than 0.701 0.693 0.163 0.887 0.642 0.134
KL ioi 0.539 0.792 0.486 0.458 0.671 0.605
Loss docstring 0.929 0.821 0.482 0.825 0.889 0.398
Loss greater-than 0.491 0.706 0.639 0.783 0.631 0.522
Loss ioi 0.447 0.836 0.393 0.424 0.728 0.479
L2 tracr-proportion 1.000 0.679 0.829 1.000 0.909 1.000
L2 tracr-reverse 1.000 0.577 0.801 1.000 0.750 1.000
""",
    zero=True,
)


def metric_kind(metric: str) -> str:
    """How the paper's tables name a metric: "KL", "L2", or "Loss" (the task's own metric)."""
    return {"kl_div": "KL", "l2": "L2"}.get(metric, "Loss")


def default_thresholds(task_name: str, metric: str) -> np.ndarray:
    """The paper's ACDC threshold grid for a task and metric (reference §6)."""
    if task_name.startswith("tracr"):
        return np.logspace(-5, -1, 21)
    if task_name == "ioi":
        return np.logspace(-6, 0, 31) if metric == "kl_div" else np.logspace(-4, 0, 21)
    if task_name in ("greater-than", "greaterthan"):
        return np.logspace(-6, 0, 31) if metric == "kl_div" else np.logspace(-3, -1, 21)
    if task_name == "docstring":
        return np.unique(np.concatenate([np.logspace(-4, 0, 21), np.logspace(-2, 0.5, 21)]))
    return np.logspace(-4, 0, 21)


def default_sweep(algorithm: str, task_name: str, metric: str) -> np.ndarray | None:
    """The default hyperparameter sweep of an algorithm (`None` where it has none)."""
    from ._sp import sp_lambdas

    if algorithm == "acdc":
        return default_thresholds(task_name, metric)
    if algorithm == "sp":
        return sp_lambdas(task_name, metric)
    if algorithm == "edge-pruning":
        return np.logspace(-3, 1, 9)
    return None


@dataclasses.dataclass
class _Sweep:
    scores: list[float]
    circuits: np.ndarray  # (circuit, edge) bool
    extra: dict


def _run_algorithm(name, bundle, metric, zero_ablation, sweep, key, settings) -> _Sweep:
    model, task = bundle.model, bundle.val
    if name == "acdc":
        from ._acdc import acdc_sweep

        results = acdc_sweep(model, task, list(sweep), metric=metric, zero_ablation=zero_ablation)
        return _Sweep(
            [float(r.threshold) for r in results],
            np.stack([np.asarray(r.present, bool) for r in results]),
            {"thresholds": [float(r.threshold) for r in results]},
        )
    if name == "sp":
        from ._sp import sp_sweep

        results = sp_sweep(
            model,
            task,
            sweep,
            key=key,
            metric=metric,
            zero_ablation=zero_ablation,
            n_steps=settings["sp_steps"],
            lr=settings["sp_lr"],
        )
        return _Sweep(
            [r.lam for r in results],
            np.stack([r.present for r in results]),
            {"final_metric": [float(r.metric[-1]) for r in results]},
        )
    if name == "hisp":
        from ._hisp import hisp

        result = hisp(model, task, metric=metric)
        return _Sweep(
            result.cumulative.tolist(),
            result.circuits,
            {"order": [result.units[i] for i in result.order]},
        )
    if name in ("eap", "eap-ig"):
        from ._eap import eap_ig_scores, eap_scores

        # check=False: a vanishing gradient is reported in the note below, not raised, so
        # that one algorithm's meaningless ROC does not stop the others'.
        if name == "eap":
            scores = eap_scores(
                model, task, metric=metric, zero_ablation=zero_ablation, check=False
            )
        else:
            scores = eap_ig_scores(
                model,
                task,
                metric=metric,
                zero_ablation=zero_ablation,
                steps=settings["eap_ig_steps"],
                check=False,
            )
        ks, circuits = top_k_circuits(np.abs(scores))
        extra = {"edge_scores": scores.tolist()}
        if not np.any(np.abs(scores) > 1e-12):
            extra["note"] = (
                f"every {name} score is 0: the metric is stationary at the "
                + ("clean model" if name == "eap" else "points sampled")
                + " (KL and L2 to the model's own outputs are minimal there), so the ranking is "
                "edge-id order and this ROC is meaningless; use EAP-IG or a task metric"
            )
        return _Sweep([float(k) for k in ks], circuits, extra)
    if name == "edge-pruning":
        from ._edge_pruning import edge_pruning_sweep

        results = edge_pruning_sweep(
            model,
            task,
            sweep,
            key=key,
            metric=metric,
            zero_ablation=zero_ablation,
            n_steps=settings["edge_pruning_steps"],
            lr=settings["edge_pruning_lr"],
        )
        return _Sweep(
            [r.lam for r in results],
            np.stack([r.present for r in results]),
            {"final_metric": [float(r.metric[-1]) for r in results]},
        )
    raise AssertionError(name)


def roc_report(
    bundle,
    algorithms: Sequence[str],
    *,
    zero_ablation: bool,
    metric: str | None,
    out_dir: "str | os.PathLike",
    sweeps: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    seed: int = 0,
    sp_steps: int = 10_000,
    sp_lr: float = 1e-3,
    edge_pruning_steps: int = 2_000,
    edge_pruning_lr: float = 0.05,
    eap_ig_steps: int = 5,
    precision: str | None = None,
    log: Callable[[str], None] | None = None,
    parts_dir: "str | os.PathLike | None" = None,
    settings_sha256: str | None = None,
    fresh: bool = False,
    before_write: Callable[[], None] | None = None,
) -> dict:
    """Runs `algorithms` on `bundle.val` and scores them against `bundle.canonical`.

    **Arguments:**

    - `bundle`: a [`jacdc.tasks.TaskBundle`][] with a canonical circuit.
    - `algorithms`: names among `"acdc"`, `"sp"`, `"hisp"`, `"eap"`, `"eap-ig"`,
        `"edge-pruning"`.
    - `zero_ablation`: zero ablation instead of corrupted activations (HISP's circuits do not
        depend on it).
    - `metric`: the metric every algorithm minimises; `None` for `bundle.default_metric`.
    - `out_dir`: folder for `roc-{task}-{metric}-{ablation}.{json,md,png,svg}` (created).
    - `sweeps`: per-algorithm overrides of the default sweep (ACDC thresholds, SP and
        edge-pruning lambdas).
    - `seed`: PRNG seed of SP and edge pruning.
    - `sp_steps`, `sp_lr`, `edge_pruning_steps`, `edge_pruning_lr`, `eap_ig_steps`: training
        settings.
    - `precision`: matmul precision of every algorithm (`jacdc.matmul_precision`; default
        `"highest"`), recorded in `settings.precision`.
    - `log`: called with one line of progress when each algorithm starts and ends.
    - `parts_dir`: resume: each algorithm's finished sweep is saved there as
        `<algorithm>.json` (with `settings_sha256`, which must identify every setting of the
        report); a rerun reuses the parts whose hash and algorithm match (unless `fresh`), so
        a killed report continues with the next algorithm, and gives the same report.
    - `before_write`: called just before the report files are written.

    **Returns:** the report as a dict (what the JSON file holds), with per algorithm the edge
    and node AUCs (pessimistic and trapezoid), the ROC points and the wall time, the
    published AUCs where the paper has them, and the paths written.
    """
    from ._precision import matmul_precision, resolve

    precision = resolve(precision)
    algorithms = list(algorithms)
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(
            f"Unknown algorithm(s) {unknown}; choose from {', '.join(ALGORITHMS)}."
            if unknown
            else f"No algorithm given; choose from {', '.join(ALGORITHMS)}."
        )
    if bundle.canonical is None:
        raise ValueError(
            f"Task {bundle.name!r} has no canonical circuit, so there is no ROC to compute. "
            "Use a task with a canonical circuit (e.g. tracr-reverse, ioi)."
        )
    metric = bundle.default_metric if metric is None else metric
    if metric not in bundle.val.metrics:
        raise ValueError(
            f"Unknown metric {metric!r} for task {bundle.name!r}; available: "
            f"{sorted(bundle.val.metrics)}."
        )
    sweeps = dict(sweeps or {})
    bad = [a for a in sweeps if a not in ("acdc", "sp", "edge-pruning")]
    if bad:
        raise ValueError(f"`sweeps` can set acdc, sp and edge-pruning only, got {bad}.")
    shape = bundle.model.graph_shape
    graph = graph_of(shape)
    truth = as_edge_vector(graph, bundle.canonical)
    settings = dict(
        sp_steps=sp_steps,
        sp_lr=sp_lr,
        edge_pruning_steps=edge_pruning_steps,
        edge_pruning_lr=edge_pruning_lr,
        eap_ig_steps=eap_ig_steps,
    )
    ablation = "zero" if zero_ablation else "random"
    published = PUBLISHED.get((bundle.name, metric_kind(metric), zero_ablation), {})
    report = {
        "task": bundle.name,
        "metric": metric,
        "zero_ablation": zero_ablation,
        "n_edges": len(graph),
        "n_nodes": len(node_names(shape)),
        "canonical_edges": int(truth.sum()),
        "canonical_nodes": int(present_nodes(shape, truth).sum()),
        "settings": dict(
            settings,
            seed=seed,
            precision=precision,
            tracr_positions=bundle.info.get("positions"),
            fold_value_biases=getattr(bundle.model.cfg, "fold_value_biases", None),
        ),
        "algorithms": {},
    }
    keys = dict(zip(ALGORITHMS, jr.split(jr.key(seed), len(ALGORITHMS))))
    from ._runs import interruption_point

    for i, name in enumerate(algorithms):
        sweep = sweeps.get(name, default_sweep(name, bundle.name, metric))
        part = _load_part(parts_dir, name, settings_sha256, graph, fresh)
        if part is not None:
            result, wall = part
            if log is not None:
                log(f"{name}: reusing the finished run in {parts_dir}")
        else:
            if log is not None:
                size = "" if sweep is None else f", {len(sweep)} settings"
                log(f"{name} ({i + 1}/{len(algorithms)}{size}) ...")
            start = time.perf_counter()
            with matmul_precision(precision):
                result = _run_algorithm(
                    name, bundle, metric, zero_ablation, sweep, keys[name], settings
                )
            wall = time.perf_counter() - start
            _save_part(parts_dir, name, settings_sha256, result, wall)
        interruption_point("roc-algorithm")
        stats = roc(shape, truth, result.circuits)
        entry = {
            "edge_auc": stats.edge_auc,
            "node_auc": stats.node_auc,
            "edge_auc_trapezoid": stats.edge_auc_trapezoid,
            "node_auc_trapezoid": stats.node_auc_trapezoid,
            "published": list(published[name]) if name in published else None,
            "wall_time": wall,
            "points": {
                "score": [float(s) for s in result.scores],
                "edge_fpr": stats.edge_fpr.tolist(),
                "edge_tpr": stats.edge_tpr.tolist(),
                "node_fpr": stats.node_fpr.tolist(),
                "node_tpr": stats.node_tpr.tolist(),
                "n_edges": stats.n_edges.tolist(),
                "n_nodes": stats.n_nodes.tolist(),
            },
            "extra": result.extra,
        }
        report["algorithms"][name] = entry
        if log is not None:
            log(
                f"{name}: edge AUC {stats.edge_auc:.3f}, node AUC {stats.node_auc:.3f} "
                f"({len(result.scores)} circuits, {wall:.1f} s)"
            )
            if "note" in result.extra:
                log(f"{name}: note: {result.extra['note']}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"roc-{bundle.name}-{metric}-{ablation}"
    paths = {suffix: str(out / f"{stem}.{suffix}") for suffix in ("json", "md", "png", "svg")}
    report["files"] = paths
    if settings_sha256 is not None:
        report["settings_sha256"] = settings_sha256
    report = _jsonable(report)
    if before_write is not None:
        before_write()
    _atomic_write(out / f"{stem}.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    _atomic_write(out / f"{stem}.md", markdown_table(report))
    _plot(report, out, stem)
    return report


def markdown_table(report: dict) -> str:
    """The report's AUC table in Markdown (published values beside ours where known)."""
    ablation = "zero" if report["zero_ablation"] else "corrupted (random)"
    lines = [
        f"# ROC: {report['task']}, metric `{report['metric']}`, {ablation} ablation",
        "",
        f"Graph: {report['n_edges']} counted edges, {report['n_nodes']} nodes; canonical circuit "
        f"{report['canonical_edges']} edges, {report['canonical_nodes']} nodes. AUC = the "
        "paper's pessimistic step AUC (trapezoid in brackets).",
        "",
        "| algorithm | edge AUC | node AUC | published edge | published node | circuits | "
        "time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in report["algorithms"].items():
        pub = e["published"] or ("–", "–")
        pub = [p if isinstance(p, str) else f"{p:.3f}" for p in pub]
        lines.append(
            f"| {name} | {e['edge_auc']:.3f} ({e['edge_auc_trapezoid']:.3f}) | "
            f"{e['node_auc']:.3f} ({e['node_auc_trapezoid']:.3f}) | {pub[0]} | {pub[1]} | "
            f"{len(e['points']['edge_fpr'])} | {e['wall_time']:.1f} |"
        )
    notes = [
        f"- {name}: {e['extra']['note']}"
        for name, e in report["algorithms"].items()
        if e.get("extra", {}).get("note")
    ]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def _save_part(parts_dir, name: str, run_hash: str | None, result: _Sweep, wall: float) -> None:
    if parts_dir is None:
        return
    doc = {
        "algorithm": name,
        "settings_sha256": run_hash,
        "wall_time": wall,
        "scores": [float(s) for s in result.scores],
        "circuits": [np.nonzero(c)[0].tolist() for c in np.asarray(result.circuits, bool)],
        "n_edges": int(np.asarray(result.circuits).shape[1]),
        "extra": _jsonable(result.extra),
    }
    _atomic_write(Path(parts_dir) / f"{name}.json", json.dumps(doc, allow_nan=False) + "\n")


def _load_part(parts_dir, name: str, run_hash: str | None, graph, fresh: bool):
    """A finished algorithm's sweep saved by an earlier (killed) run of the same report, or
    `None`. A part that does not validate is ignored (and recomputed)."""
    if parts_dir is None or run_hash is None:
        return None
    path = Path(parts_dir) / f"{name}.json"
    if not path.exists():
        return None
    if fresh:
        path.unlink()
        return None
    try:
        doc = json.loads(path.read_text())
        ok = (
            doc["algorithm"] == name
            and doc["settings_sha256"] == run_hash
            and doc["n_edges"] == len(graph)
            and len(doc["scores"]) == len(doc["circuits"]) > 0
            and all(math.isfinite(s) for s in doc["scores"])
        )
        circuits = np.zeros((len(doc["circuits"]), len(graph)), bool)
        for row, ids in enumerate(doc["circuits"]):
            ids = np.asarray(ids, np.int64)
            ok = ok and bool(np.all((ids >= 0) & (ids < len(graph))))
            circuits[row, ids[(ids >= 0) & (ids < len(graph))]] = True
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    return _Sweep([float(s) for s in doc["scores"]], circuits, doc["extra"]), float(
        doc["wall_time"]
    )


def _atomic_write(path: Path, text: str) -> None:
    from ._results import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _plot(report: dict, out: Path, stem: str) -> None:
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ._roc import roc_curve

    fig = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, level in zip(axes, ("edge", "node")):
        for name, e in report["algorithms"].items():
            pts = e["points"]
            fpr, tpr = roc_curve(pts[f"{level}_fpr"], pts[f"{level}_tpr"])
            (line,) = ax.plot(
                fpr,
                tpr,
                drawstyle="steps-post",
                label=f"{name} (AUC {e[f'{level}_auc']:.3f})",
            )
            ax.scatter(pts[f"{level}_fpr"], pts[f"{level}_tpr"], s=8, color=line.get_color())
        ax.plot([0, 1], [0, 1], color="0.8", linewidth=0.8, zorder=0)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{level}s")
        ax.legend(loc="lower right", fontsize=8)
    ablation = "zero" if report["zero_ablation"] else "corrupted"
    fig.suptitle(f"{report['task']} ({report['metric']}, {ablation} ablation)")
    fig.tight_layout()
    for fmt in ("png", "svg"):
        path = out / f"{stem}.{fmt}"
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(tmp, file_mode())
        try:
            fig.savefig(tmp, format=fmt, dpi=120)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
