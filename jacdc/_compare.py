"""Comparing saved circuits (`jacdc compare A.json B.json [...]`).

For every ordered pair `(A, B)` of results on the same graph, over edges and over nodes (the
nodes a circuit touches, as in the node-level ROC, [`jacdc.node_names`][]):

- `overlap` = |A ∩ B|, `jaccard` = |A ∩ B| / |A ∪ B| (1 when both are empty);
- `precision` of A against B = |A ∩ B| / |A| (how much of A is in B), `recall` = |A ∩ B| / |B|
  (how much of B A finds); an empty denominator gives `None`.

With the model and data at hand (the results' own, as `jacdc eval` finds them) it also draws one
faithfulness-vs-size plot: a point `(edges kept, faithfulness)` per result and, for score-based
results, the faithfulness curve of their top-k circuits. The plot is written as PNG and SVG,
atomically (needs matplotlib: the `plot` extra).
"""

import io
from pathlib import Path

import numpy as np

from ._graph import GraphShape
from ._roc import present_nodes


def _ratio(num: int, den: int):
    return None if den == 0 else num / den


def overlap_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Overlap, Jaccard, precision and recall of boolean set `a` against reference `b`."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter, union = int((a & b).sum()), int((a | b).sum())
    return {
        "overlap": inter,
        "jaccard": 1.0 if union == 0 else inter / union,
        "precision": _ratio(inter, int(a.sum())),
        "recall": _ratio(inter, int(b.sum())),
    }


def compare_circuits(names: list[str], shape: GraphShape, circuits: list[np.ndarray]) -> dict:
    """Pairwise edge and node statistics of `circuits` (bool `(edge,)` each, same graph)."""
    nodes = [present_nodes(shape, c) for c in circuits]
    pairs = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                pairs.append(
                    {
                        "a": a,
                        "b": b,
                        "edges": overlap_stats(circuits[i], circuits[j]),
                        "nodes": overlap_stats(nodes[i], nodes[j]),
                    }
                )
    return {
        "results": [
            {"name": n, "n_edges": int(c.sum()), "n_nodes": int(nd.sum())}
            for n, c, nd in zip(names, circuits, nodes)
        ],
        "pairs": pairs,
    }


def faithfulness_plot(points: list[dict], out_stem: Path) -> list[Path]:
    """One faithfulness-vs-size plot (PNG and SVG) of `points`: dicts with `name`, `n_edges`,
    `faithfulness` and optionally `curve` (`ks`, `f`). Returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            'The faithfulness plot needs matplotlib: pip install "jacdc[plot]" (or pass --no-plot).'
        ) from err
    from ._results import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, p in enumerate(points):
        color = f"C{k % 10}"
        if p.get("curve"):
            ks = np.maximum(np.asarray(p["curve"]["ks"], float), 0.5)
            ax.plot(ks, p["curve"]["f"], "-", color=color, alpha=0.6)
        if p.get("faithfulness") is not None:
            ax.plot([max(p["n_edges"], 0.5)], [p["faithfulness"]], "o", color=color,
                    label=f"{p['name']} ({p['n_edges']} edges)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("edges in the circuit")
    ax.set_ylabel("faithfulness (m(C) - m(∅)) / (m(M) - m(∅))")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        path = out_stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def compare_command(args) -> dict:
    """`jacdc compare`: the statistics, `compare.json` and the plot (see the module doc)."""
    from ._eval import ablation_of_result, circuit_of, evaluate_circuit, load_for_eval, scores_of
    from ._results import atomic_write_json, read_result

    if len(args.results) < 2:
        raise ValueError("Compare needs at least two result files.")
    docs = [read_result(p) for p in args.results]
    names = [str(p) for p in args.results]
    shape = GraphShape(**docs[0]["graph"])
    for name, doc in zip(names[1:], docs[1:]):
        if GraphShape(**doc["graph"]) != shape:
            raise ValueError(
                f"{name} is a circuit of another graph than {names[0]} (another model); only "
                "circuits of one model can be compared."
            )
    report = compare_circuits(names, shape, [circuit_of(d) for d in docs])
    out = Path(args.out) if args.out else Path(args.results[0]).parent
    if not args.no_plot:
        points = []
        for name, doc in zip(names, docs):
            model, task, label = load_for_eval(doc, Path(name).name)
            metric = doc["hyperparameters"]["metric"]
            ev = evaluate_circuit(model, task, circuit_of(doc), metric, ablation_of_result(doc),
                                  scores_of(doc))  # fmt: skip
            short = f"{Path(name).parent.name}/{Path(name).stem}"
            points.append({"name": f"{short} {doc.get('algorithm')}", "data": label, **ev})
        for r, p in zip(report["results"], points):
            r["faithfulness"] = p["faithfulness"]
            r["metric"] = {k: p[k] for k in ("metric", "circuit", "full_model", "empty_circuit")}
        report["plot"] = [str(p) for p in faithfulness_plot(points, out / "faithfulness")]
    atomic_write_json(out / "compare.json", report)
    report["json"] = str(out / "compare.json")
    return report


def format_report(report: dict) -> str:
    def fmt(x):
        return "-" if x is None else f"{x:.3g}"

    lines = []
    for r in report["results"]:
        f = r.get("faithfulness")
        extra = "" if "faithfulness" not in r else f", faithfulness {fmt(f)}"
        lines.append(f"{r['name']}: {r['n_edges']} edges, {r['n_nodes']} nodes{extra}")
    for p in report["pairs"]:
        e, n = p["edges"], p["nodes"]
        lines.append(
            f"{p['a']} vs {p['b']}: edges overlap {e['overlap']}, Jaccard {fmt(e['jaccard'])}, "
            f"precision {fmt(e['precision'])}, recall {fmt(e['recall'])}; nodes overlap "
            f"{n['overlap']}, Jaccard {fmt(n['jaccard'])}, precision {fmt(n['precision'])}, "
            f"recall {fmt(n['recall'])}"
        )
    files = [report["json"]] + report.get("plot", [])
    lines.append(f"wrote {', '.join(files)}")
    return "\n".join(lines)
