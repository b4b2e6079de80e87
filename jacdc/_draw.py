"""Circuit drawings: Graphviz DOT of a circuit, rendered to SVG (or PNG) when `dot` is installed.

A drawing has one node per *component*, not per hook:

- the embeddings (one node, or token and position for tracr) in the top row;
- every attention head as a small table: a `q | k | v` row of input ports over the head's name.
  An edge into a head's query (key, value) input ends on its `q` (`k`, `v`) port and is drawn in
  that channel's colour. A filled port means the head's direct edge (`q_input -> q`) is kept; a
  white port with grey letter means that input is replaced by its corrupted value;
- every MLP as one box (its input and output are one node: the link inside is implied);
- the output (`hook_resid_post` of the last layer) in the bottom row.

Rows are layers: each layer's heads share a row, its MLP the row below, and a grey column of row
labels (`L3 attn`, `L3 MLP`) runs beside them. Edges into an MLP or the output are grey. When
the result has scores, line width grows with `|score|` (relative to the largest among the drawn
edges) and every edge's tooltip (in SVG) gives its name and score. A legend cluster explains the
colours. Only components that touch a present edge are drawn.
"""

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ._graph import QKV, Edge, Graph, GraphShape, graph_of


CHANNEL_COLOURS = {"q": "#0072B2", "k": "#E69F00", "v": "#009E73"}
"""Edge colours of the query, key and value inputs (Okabe-Ito: safe for colour-blind readers)."""
RESIDUAL_COLOUR = "#666666"
_LIGHT = {"q": "#cfe3f3", "k": "#fbe7c0", "v": "#c6eadd"}  # filled port: direct edge kept
_HEAD_FILL = "#eef2ff"
_MLP_FILL = "#f3e8f7"
_IO_FILL = "#e8e8e8"
_MIN_WIDTH, _MAX_WIDTH = 0.8, 5.0
DENSE_EDGES = 80
"""Above this many drawn edges, edges carry no text label and nodes sit closer together."""
LEGEND_CLUSTER = "cluster_legend"
"""Name of the legend's DOT subgraph (its node has no edges)."""
ROW_PREFIX = "row:"
"""Node ids of the grey row labels start with this; their edges are invisible (`style=invis`)."""


# ---- node ids ------------------------------------------------------------------------------


def _src_node(shape: GraphShape, src: int) -> str:
    kind = shape.src_kind(src)
    if kind == "embed":
        return "embed" if shape.n_embed == 1 else ("tok_embed", "pos_embed")[src]
    layer = shape.src_layer(src)
    if kind == "head":
        return _head_node(layer, shape.src_head(src))
    return _mlp_node(layer)


def _head_node(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


def _mlp_node(layer: int) -> str:
    return f"L{layer}.MLP"


OUTPUT_NODE = "output"


def _receiver(graph: Graph, edge_id: int) -> tuple[str, str | None]:
    """The drawn node an edge ends on, and its port (`q`/`k`/`v` for head inputs)."""
    e = graph.edges[edge_id]
    if e.field in QKV:
        layer, head, _ = e.index
        return _head_node(layer, head), e.field
    if e.field == "mlp":
        return _mlp_node(e.index[0]), None
    if e.field == "out":
        return OUTPUT_NODE, None
    layer, head, _ = e.index  # direct: inside the head
    return _head_node(layer, head), None


# ---- DOT ------------------------------------------------------------------------------------


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _fmt_score(s: float) -> str:
    return f"{s:.3g}" if np.isfinite(s) else "untested"


def _head_label(name: str, direct: dict[str, bool], tips: dict[str, str]) -> str:
    cells = []
    for c in QKV:
        if direct[c]:
            cells.append(
                f'<TD PORT="{c}" BGCOLOR="{_LIGHT[c]}" TOOLTIP="{_html(tips[c])}">'
                f'<FONT COLOR="{CHANNEL_COLOURS[c]}"><B>{c}</B></FONT></TD>'
            )
        else:
            cells.append(
                f'<TD PORT="{c}" BGCOLOR="white" TOOLTIP="{_html(tips[c])}">'
                f'<FONT COLOR="#aaaaaa">{c}</FONT></TD>'
            )
    return (
        '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" '
        f'BGCOLOR="{_HEAD_FILL}"><TR>{"".join(cells)}</TR>'
        f'<TR><TD COLSPAN="3" PORT="name">{_html(name)}</TD></TR></TABLE>>'
    )


def _legend(with_scores: bool, max_score: float | None) -> list[str]:
    def row(swatch: str, text: str) -> str:
        cell = f'<TD BGCOLOR="{swatch}" WIDTH="28" HEIGHT="6"></TD>'
        return f'<TR>{cell}<TD ALIGN="LEFT">{text}</TD></TR>'

    rows = [
        row(CHANNEL_COLOURS["q"], "into a head's query input (port q)"),
        row(CHANNEL_COLOURS["k"], "into a head's key input (port k)"),
        row(CHANNEL_COLOURS["v"], "into a head's value input (port v)"),
        row(RESIDUAL_COLOUR, "into an MLP or the output"),
        '<TR><TD BGCOLOR="#cfe3f3">q</TD><TD ALIGN="LEFT">filled port: direct edge kept</TD></TR>',
        '<TR><TD BGCOLOR="white"><FONT COLOR="#aaaaaa">q</FONT></TD>'
        '<TD ALIGN="LEFT">white port: that input corrupted</TD></TR>',
    ]
    if with_scores:
        rows.append(
            f'<TR><TD></TD><TD ALIGN="LEFT">line width: |score| (widest {max_score:.3g})</TD></TR>'
        )
    table = (
        '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">'
        + "".join(rows)
        + "</TABLE>>"
    )
    return [
        f"  subgraph {LEGEND_CLUSTER} {{",
        '    label="legend"; style="rounded"; color="#bbbbbb"; fontsize=10;',
        f"    legend [shape=plain, fontsize=9, label={table}];",
        "  }",
    ]


def circuit_dot(
    graph: Graph,
    present: Sequence[bool] | np.ndarray,
    *,
    scores: Sequence[float] | np.ndarray | None = None,
    title: str = "",
    legend: bool = True,
) -> str:
    """Graphviz DOT of a circuit, laid out by layer (see the module docstring for the picture).

    **Arguments:**

    - `graph`: the [`jacdc.Graph`][] the circuit lives in.
    - `present`: bools over edge ids (`len(graph)` of them): the circuit.
    - `scores`: optional floats over edge ids (NaN: no score); line width grows with `|score|`.
    - `title`: drawn above the picture.
    - `legend`: whether to add the legend cluster.

    **Returns:** the DOT source, deterministic for given inputs.
    """
    shape = graph.shape
    present = np.asarray(present, bool)
    if present.shape != (len(graph),):
        raise ValueError(
            f"`present` must hold one bool per edge of the graph ({len(graph)}), got shape "
            f"{present.shape}."
        )
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        if scores.shape != (len(graph),):
            raise ValueError(
                f"`scores` must hold one float per edge of the graph ({len(graph)}), got shape "
                f"{scores.shape}."
            )
    ids = [int(i) for i in np.nonzero(present)[0]]
    drawn = [i for i in ids if graph.edges[i].field != "direct"]
    finite = [abs(scores[i]) for i in drawn if np.isfinite(scores[i])] if scores is not None else []
    max_score = max(finite) if finite and max(finite) > 0 else None

    # Components touched by a present edge (a head with only direct edges is drawn too).
    nodes: set[str] = set()
    direct: dict[str, dict[str, bool]] = {}
    tips: dict[str, dict[str, str]] = {}
    for i in ids:
        e = graph.edges[i]
        receiver, _ = _receiver(graph, i)
        nodes.add(receiver)
        if e.field == "direct":
            direct.setdefault(receiver, dict.fromkeys(QKV, False))[QKV[e.index[2]]] = True
        else:
            nodes.add(_src_node(shape, e.index[-1]))
    for layer in range(shape.n_layers):
        for head in range(shape.n_heads):
            node = _head_node(layer, head)
            if node in nodes:
                d = direct.setdefault(node, dict.fromkeys(QKV, False))
                tips[node] = {}
                for channel, c in enumerate(QKV):
                    edge_id = graph.id_of[Edge("direct", (layer, head, channel))]
                    state = "kept" if d[c] else "removed"
                    tip = f"{graph.names[edge_id]}: {state}"
                    if scores is not None:
                        tip += f", score {_fmt_score(scores[edge_id])}"
                    tips[node][c] = tip

    # Every edge crossing a row is a virtual node of dot's layout, spaced by `nodesep`: large
    # circuits get tight spacing and no edge texts (the ports and colours still name q/k/v).
    dense = len(drawn) > DENSE_EDGES
    lines = [
        "digraph circuit {",
        f"  rankdir=TB; newrank=true; ranksep=0.35; nodesep={0.04 if dense else 0.2};",
        '  fontname="Helvetica";',
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", arrowsize=0.5];',
    ]
    if title:
        lines.append(f"  label={_q(title)}; labelloc=t; fontsize=14;")

    def row_of(node: str) -> str:
        if node in ("embed", "tok_embed", "pos_embed"):
            return "embed"
        if node == OUTPUT_NODE:
            return "output"
        layer, rest = node.split(".")
        return f"{layer} {'MLP' if rest == 'MLP' else 'attn'}"

    row_order = ["embed"]
    for layer in range(shape.n_layers):
        row_order += [f"L{layer} attn"] + ([f"L{layer} MLP"] if shape.has_mlp else [])
    row_order.append("output")
    rows: dict[str, list[str]] = {r: [] for r in row_order}
    for node in _sorted_nodes(shape, nodes):
        rows[row_of(node)].append(node)

    # Nodes.
    for node in _sorted_nodes(shape, nodes):
        if node in direct:
            lines.append(
                f"  {_q(node)} [shape=plain, label={_head_label(node, direct[node], tips[node])}];"
            )
        elif node.endswith(".MLP"):
            label = f"{node.split('.')[0]} MLP"
            lines.append(
                f'  {_q(node)} [shape=box, style="rounded,filled", fillcolor="{_MLP_FILL}", '
                f"label={_q(label)}];"
            )
        else:
            label = {"tok_embed": "token embed", "pos_embed": "position embed"}.get(node, node)
            lines.append(
                f'  {_q(node)} [shape=box, style="filled", fillcolor="{_IO_FILL}", '
                f"label={_q(label)}];"
            )

    # Rows: one rank per row, and a column of grey labels chained by invisible edges so that
    # rows keep their order even where no edge joins them.
    used_rows = [r for r in row_order if rows[r]]
    for r in used_rows:
        members = " ".join(_q(n) for n in rows[r])
        if r in ("embed", "output"):
            lines.append(f"  {{ rank={'min' if r == 'embed' else 'max'}; {members} }}")
        else:
            label_node = _q(ROW_PREFIX + r)
            lines.append(
                f'  {label_node} [shape=plaintext, fontcolor="#999999", fontsize=10, '
                f"label={_q(r)}];"
            )
            lines.append(f"  {{ rank=same; {label_node} {members} }}")
    chain = [ROW_PREFIX + r for r in used_rows if r not in ("embed", "output")]
    for a, b in zip(chain, chain[1:]):
        lines.append(f"  {_q(a)} -> {_q(b)} [style=invis];")

    # Edges.
    for i in drawn:
        e = graph.edges[i]
        sender = _src_node(shape, e.index[-1])
        receiver, port = _receiver(graph, i)
        colour = CHANNEL_COLOURS[port] if port else RESIDUAL_COLOUR
        attrs = [f'color="{colour}"']
        if port:
            attrs.append(f"headport={_q(port + ':n')}")
            if not dense:
                attrs += [f"label={_q(port)}", f'fontcolor="{colour}"', "fontsize=9"]
        if sender in direct:
            attrs.append('tailport="name:s"')
        tip = graph.names[i]
        if scores is not None:
            s = float(scores[i])
            tip += f": score {_fmt_score(s)}"
            if max_score is not None and np.isfinite(s):
                width = _MIN_WIDTH + (_MAX_WIDTH - _MIN_WIDTH) * abs(s) / max_score
                attrs.append(f"penwidth={width:.2f}")
        attrs.append(f"tooltip={_q(tip)}")
        lines.append(f"  {_q(sender)} -> {_q(receiver)} [{', '.join(attrs)}];")

    if legend:
        lines += _legend(max_score is not None, max_score)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _sorted_nodes(shape: GraphShape, nodes: Iterable[str]) -> list[str]:
    order = {_src_node(shape, s): s for s in range(shape.n_src)}
    for layer in range(shape.n_layers):  # heads whose only present edges are direct ones
        for head in range(shape.n_heads):
            order.setdefault(_head_node(layer, head), shape.head_src(layer, head))
    order[OUTPUT_NODE] = shape.n_src
    return sorted(nodes, key=order.__getitem__)


# ---- rendering -----------------------------------------------------------------------------


def have_graphviz() -> bool:
    """Whether Graphviz's `dot` program is on `PATH`."""
    return shutil.which("dot") is not None


def render(dot: str, fmt: str = "svg") -> bytes:
    """Runs Graphviz's `dot -T{fmt}` on a DOT source. Raises `RuntimeError` (with the fix) when
    `dot` is not installed or fails."""
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(
            "Graphviz's `dot` program is not on PATH; install Graphviz (e.g. `apt-get install "
            "graphviz`, `brew install graphviz`, `conda install graphviz`) or ask for DOT."
        )
    out = subprocess.run([exe, f"-T{fmt}"], input=dot.encode(), capture_output=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"Graphviz `dot -T{fmt}` failed: {out.stderr.decode().strip()}")
    return out.stdout


class SVG(str):
    """An SVG document as a `str`; Jupyter displays it as the picture (`_repr_svg_`)."""

    def _repr_svg_(self) -> str:
        return str(self)


# ---- results ---------------------------------------------------------------------------------


def circuit_of_document(doc: Mapping[str, Any], where: str = "the result") -> dict[str, Any]:
    """`graph`, `present`, `scores` (or None) and a title from a `result.json` document, with
    one-line errors naming what is missing or out of range."""
    if not isinstance(doc, Mapping):
        raise ValueError(
            f"{where} must be a JSON object (a jacdc result), got {type(doc).__name__}."
        )
    for key in ("graph", "edges"):
        if key not in doc:
            raise ValueError(
                f"{where} has no `{key}` entry; expected a result.json written by jacdc "
                "(`jacdc discover ...`)."
            )
    try:
        shape = GraphShape(**doc["graph"])
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: `graph` must hold n_layers, n_heads, has_mlp and n_embed, got "
            f"{doc['graph']!r} ({e})."
        ) from None
    graph = graph_of(shape)
    present = np.zeros(len(graph), bool)
    scores = np.full(len(graph), np.nan)
    any_score = False
    for k, rec in enumerate(doc["edges"]):
        edge_id = rec.get("id") if isinstance(rec, Mapping) else None
        if not isinstance(edge_id, int) or isinstance(edge_id, bool):
            raise ValueError(f"{where}: edges[{k}] has no integer `id` (got {rec!r}).")
        if not 0 <= edge_id < len(graph):
            raise ValueError(
                f"{where}: edges[{k}] has id {edge_id}, outside this graph's [0, {len(graph)}) "
                "(the `graph` entry and the edges do not belong together)."
            )
        present[edge_id] = bool(rec.get("present", False))
        score = rec.get("score")
        if isinstance(score, (int, float)) and not isinstance(score, bool):
            scores[edge_id] = float(score)
            any_score = True
    task, algorithm = doc.get("task", "?"), doc.get("algorithm", "?")
    title = f"{task} · {algorithm} · {int(present.sum())} of {len(graph)} edges"
    return {
        "graph": graph,
        "present": present,
        "scores": scores if any_score else None,
        "title": title,
    }


def _acdc_scores(result) -> np.ndarray:
    """Per edge: the metric change when ACDC last tested removing it (NaN: never tested)."""
    scores = np.full(len(result.graph), np.nan)
    for rec in result.log:
        if not rec["skipped"]:
            scores[rec["edge"]] = rec["delta"]
    return scores


def _circuit_of(result, graph: Graph | None) -> dict[str, Any]:
    from ._acdc import ACDCResult

    if isinstance(result, ACDCResult):
        n = int(result.present.sum())
        return {
            "graph": result.graph,
            "present": np.asarray(result.present, bool),
            "scores": _acdc_scores(result),
            "title": f"acdc · threshold {result.threshold:g} · {n} of {len(result.graph)} edges",
        }
    if isinstance(result, (str, os.PathLike)):
        # Read here rather than through `jacdc._results.load_result`, which imports this module
        # (no import cycle); `circuit_of_document` validates what a drawing needs.
        import json
        from pathlib import Path

        try:
            doc = json.loads(Path(result).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{result} is not a result file (not valid JSON: {e}).") from None
        if not isinstance(doc, Mapping):
            raise ValueError(f"{result} is not a result file (not a JSON object).")
        return circuit_of_document(doc, str(result))
    if isinstance(result, Mapping):
        return circuit_of_document(result)
    if graph is None:
        raise TypeError(
            "`draw` takes a result (an ACDCResult, a result.json dict or its path); for edge "
            f"ids, names or a bool vector pass `graph=` as well (got {type(result).__name__})."
        )
    values = list(result) if not isinstance(result, np.ndarray) else result
    if isinstance(values, np.ndarray) and values.dtype == bool:
        present = values
    else:
        present = np.zeros(len(graph), bool)
        for e in values:
            present[e if isinstance(e, (int, np.integer)) else graph.edge_id(e)] = True
    return {
        "graph": graph,
        "present": present,
        "scores": None,
        "title": f"{int(np.sum(present))} of {len(graph)} edges",
    }


def draw(
    result,
    *,
    graph: Graph | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
    format: Literal["svg", "dot"] = "svg",
) -> str:
    """Draws a circuit, for notebooks and scripts.

    **Arguments:**

    - `result`: an [`jacdc.ACDCResult`][], a `result.json` document (dict) or its path, or, with
      `graph=`, the circuit itself as edge ids, edge names or a bool vector over edge ids.
    - `graph`: the [`jacdc.Graph`][] for a bare circuit (ignored for results, which name theirs).
    - `scores`: per-edge scores to draw as line width (default: the result's own, if any; ACDC's
      are the metric change at each edge's last test).
    - `title`: the caption (default: task, algorithm and circuit size).
    - `format`: `"svg"` or `"dot"`.

    **Returns:** a `str`. With `format="svg"` it is the SVG picture when Graphviz's `dot` is on
    `PATH` (a `str` that Jupyter displays as the picture), and the DOT source otherwise; with
    `format="dot"` it is always the DOT source. Check with `jacdc._draw.have_graphviz()`, or
    pass the DOT to any Graphviz viewer.
    """
    if format not in ("svg", "dot"):
        raise ValueError(f"format must be 'svg' or 'dot', got {format!r}.")
    c = _circuit_of(result, graph)
    if scores is not None:
        c["scores"] = scores
    dot = circuit_dot(
        c["graph"], c["present"], scores=c["scores"], title=c["title"] if title is None else title
    )
    if format == "dot" or not have_graphviz():
        return dot
    return SVG(render(dot, "svg").decode())


def image_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels of a PNG (from its header)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
