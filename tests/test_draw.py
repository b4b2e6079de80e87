"""Circuit drawings: the DOT structure (always) and the rendered pictures (when Graphviz is
installed). The DOT is parsed back here with a small reader of the statements `circuit_dot`
writes, so the checks are about the picture's graph, not about strings."""

import json
import re
from collections import defaultdict

import numpy as np
import pytest

import jacdc
from jacdc import _cli, _draw, _results
from jacdc._acdc import ACDCResult
from jacdc._graph import QKV, GraphShape, graph_of
from jacdc.tasks import _canonical, _tracr


REVERSE_SHAPE = GraphShape(n_layers=4, n_heads=1, has_mlp=True, n_embed=2)
needs_graphviz = pytest.mark.skipif(not _draw.have_graphviz(), reason="Graphviz `dot` not on PATH")

_EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$')
_NODE = re.compile(r'^\s*"([^"]+)" \[(.*)\];$')
_RANK = re.compile(r"^\s*\{ rank=(\w+); (.*) \}$")
_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\s]+)')


def parse(dot: str) -> dict:
    """Nodes (id -> attribute text), circuit edges (sender, receiver, attrs), invisible edges,
    rank groups (kind, ids) and whether the legend cluster is there."""
    nodes, edges, invisible, ranks = {}, [], [], []
    for line in dot.splitlines():
        if m := _EDGE.match(line):
            attrs = {k: v.strip('"') for k, v in _ATTR.findall(m[3])}
            if attrs.get("style") == "invis":
                invisible.append((m[1], m[2]))
            else:
                edges.append((m[1], m[2], attrs))
        elif m := _NODE.match(line):
            nodes[m[1]] = m[2]
        elif m := _RANK.match(line):
            ranks.append((m[1], re.findall(r'"([^"]+)"', m[2])))
    legend = f"subgraph {_draw.LEGEND_CLUSTER} {{" in dot
    return dict(nodes=nodes, edges=edges, invisible=invisible, ranks=ranks, legend=legend)


def present_of(graph, names) -> np.ndarray:
    present = np.zeros(len(graph), bool)
    present[[graph.edge_id(n) for n in names]] = True
    return present


def reachable(adjacency: dict, starts) -> set:
    seen, todo = set(starts), list(starts)
    while todo:
        for n in adjacency[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_canonical_reverse_is_one_connected_picture(tracr_reverse):
    graph = graph_of(tracr_reverse.model.graph_shape)
    assert graph.shape == REVERSE_SHAPE
    dot = _draw.circuit_dot(graph, present_of(graph, tracr_reverse.canonical_circuit()))
    p = parse(dot)
    drawn = {n for n in p["nodes"] if not n.startswith(_draw.ROW_PREFIX) and n != "legend"}
    assert drawn == {"tok_embed", "pos_embed", "L0.H0", "L0.MLP", "L1.MLP", "L2.MLP", "L3.H0"} | {
        "output"
    }
    forward, backward, undirected = (defaultdict(set) for _ in range(3))
    for a, b, _ in p["edges"]:
        forward[a].add(b)
        backward[b].add(a)
        undirected[a] |= {b}
        undirected[b] |= {a}
    assert set(undirected) == drawn
    assert reachable(undirected, ["output"]) == drawn  # one connected picture
    # ... and every component lies on a path from an embedding to the output.
    assert reachable(forward, ["tok_embed", "pos_embed"]) == drawn
    assert reachable(backward, ["output"]) == drawn
    # The paper's reading: position -> k and token -> v of the last head, MLPs -> its q.
    into_l3 = {(a, attrs["headport"]) for a, b, attrs in p["edges"] if b == "L3.H0"}
    assert into_l3 == {("L2.MLP", "q:n"), ("pos_embed", "k:n"), ("tok_embed", "v:n")}


@pytest.mark.parametrize(
    "shape, names",
    [
        (GraphShape(2, 1, True, 2), _tracr.proportion_canonical_circuit()),
        (_canonical.ATTN_4L_SHAPE, _canonical.docstring_circuit()),
        (_canonical.GPT2_SHAPE, _canonical.greater_than_circuit()),
        (_canonical.GPT2_SHAPE, _canonical.ioi_circuit()),
    ],
    ids=["proportion", "docstring", "greater-than", "ioi"],
)
def test_canonical_circuits_draw_connected(shape, names):
    p = parse(_draw.circuit_dot(graph_of(shape), present_of(graph_of(shape), names)))
    undirected = defaultdict(set)
    for a, b, _ in p["edges"]:
        undirected[a].add(b)
        undirected[b].add(a)
    assert reachable(undirected, ["output"]) == set(undirected)


def test_edges_into_heads_name_their_input():
    graph = graph_of(_canonical.ATTN_4L_SHAPE)
    names = _canonical.docstring_circuit()
    present = present_of(graph, names)
    p = parse(_draw.circuit_dot(graph, present))
    # One drawn edge per present counted edge, except the direct ones (they are the ports).
    n_direct = sum(graph.edges[i].field == "direct" for i in np.nonzero(present)[0])
    assert len(p["edges"]) == present.sum() - n_direct
    by_tip = {attrs["tooltip"]: attrs for _, _, attrs in p["edges"]}
    for i in np.nonzero(present)[0]:
        e = graph.edges[i]
        if e.field == "direct":
            continue
        attrs = by_tip[graph.names[i]]
        if e.field in QKV:
            assert attrs["headport"] == f"{e.field}:n"
            assert attrs["label"] == e.field
            assert attrs["color"] == _draw.CHANNEL_COLOURS[e.field]
        else:
            assert "headport" not in attrs and "label" not in attrs
            assert attrs["color"] == _draw.RESIDUAL_COLOUR


def test_dense_circuits_keep_ports_but_drop_edge_texts():
    graph = graph_of(_canonical.GPT2_SHAPE)
    p = parse(_draw.circuit_dot(graph, present_of(graph, _canonical.ioi_circuit())))
    assert len(p["edges"]) > _draw.DENSE_EDGES
    into_heads = [attrs for _, b, attrs in p["edges"] if ".H" in b]
    assert into_heads and all(a["headport"][0] in "qkv" and "label" not in a for a in into_heads)


def test_direct_edges_fill_the_ports():
    graph = graph_of(REVERSE_SHAPE)
    p = parse(_draw.circuit_dot(graph, present_of(graph, _tracr.reverse_canonical_circuit())))

    def filled(node):
        label = p["nodes"][node]
        return {c for c in QKV if f'PORT="{c}" BGCOLOR="white"' not in label}

    assert filled("L0.H0") == {"v"}  # only blocks.0.attn.hook_v[0] <- ... is in the circuit
    assert filled("L3.H0") == {"q", "k", "v"}
    # Removing the v direct edge of L0.H0 empties its v port but keeps the head drawn.
    present = present_of(graph, _tracr.reverse_canonical_circuit())
    present[graph.edge_id("blocks.0.attn.hook_v[0] <- blocks.0.hook_v_input[0]")] = False
    p = parse(_draw.circuit_dot(graph, present))
    assert filled("L0.H0") == set()


def test_rows_follow_the_layers():
    graph = graph_of(_canonical.GPT2_SHAPE)
    p = parse(_draw.circuit_dot(graph, present_of(graph, _canonical.greater_than_circuit())))
    rows = {}
    for kind, members in p["ranks"]:
        if kind == "min":
            assert members == ["embed"]
        elif kind == "max":
            assert members == ["output"]
        else:
            label, *nodes = members
            assert label.startswith(_draw.ROW_PREFIX) and nodes
            rows[label.removeprefix(_draw.ROW_PREFIX)] = nodes
    for row, nodes in rows.items():
        layer, kind = row.split()
        for node in nodes:
            assert node.startswith(layer + ".")
            assert node.endswith(".MLP") == (kind == "MLP")
    # Row labels are chained top to bottom in layer order, attention before MLP.
    chain = [a.removeprefix(_draw.ROW_PREFIX) for a, _ in p["invisible"]]
    chain.append(p["invisible"][-1][1].removeprefix(_draw.ROW_PREFIX))
    key = [(int(r.split()[0][1:]), r.split()[1] == "MLP") for r in chain]
    assert key == sorted(key) and set(chain) == set(rows)
    # Every edge goes down the page: from an earlier row to a later one.
    order = {n: i for i, (_, members) in enumerate(p["ranks"]) for n in members}
    position = {n: ((-1, 0) if n == "embed" else (99, 0) if n == "output" else None) for n in order}
    for row, nodes in rows.items():
        layer, kind = row.split()
        for n in nodes:
            position[n] = (int(layer[1:]), int(kind == "MLP"))
    assert all(position[a] < position[b] for a, b, _ in p["edges"])


def test_scores_set_the_line_width():
    graph = graph_of(REVERSE_SHAPE)
    names = _tracr.reverse_canonical_circuit()
    scores = np.full(len(graph), np.nan)
    rng = np.random.default_rng(0)
    for n in names[:-1]:
        scores[graph.edge_id(n)] = rng.normal()
    untested = [n for n in names if graph.edges[graph.edge_id(n)].field != "direct"][-1]
    scores[graph.edge_id(untested)] = np.nan
    p = parse(_draw.circuit_dot(graph, present_of(graph, names), scores=scores))
    widths = {}
    for _, _, attrs in p["edges"]:
        name = attrs["tooltip"].split(": score ")[0]
        widths[name] = float(attrs["penwidth"]) if "penwidth" in attrs else None
    assert widths[untested] is None
    scored = sorted((abs(scores[graph.edge_id(n)]), w) for n, w in widths.items() if w is not None)
    assert [w for _, w in scored] == sorted(w for _, w in scored)  # monotone in |score|
    assert scored[-1][1] == pytest.approx(_draw._MAX_WIDTH, abs=0.01)
    # No scores: no widths.
    p = parse(_draw.circuit_dot(graph, present_of(graph, names)))
    assert not any("penwidth" in attrs for _, _, attrs in p["edges"])


def test_legend_is_a_cluster():
    graph = graph_of(REVERSE_SHAPE)
    present = present_of(graph, _tracr.reverse_canonical_circuit())
    dot = _draw.circuit_dot(graph, present)
    assert parse(dot)["legend"] and "key input" in dot
    assert not parse(_draw.circuit_dot(graph, present, legend=False))["legend"]


def _document(graph, present, scores=None) -> dict:
    edges = []
    for i, name in enumerate(graph.names):
        rec = {"id": i, "name": name, "present": bool(present[i])}
        if scores is not None:
            rec["score"] = None if np.isnan(scores[i]) else float(scores[i])
        edges.append(rec)
    return {
        "schema_version": _results.SCHEMA_VERSION,
        "algorithm": "acdc",
        "task": "tracr-reverse",
        "graph": {"n_layers": 4, "n_heads": 1, "has_mlp": True, "n_embed": 2},
        "n_edges_total": len(graph),
        "n_edges": int(present.sum()),
        "edges": edges,
    }


def test_draw_takes_results_documents_paths_and_edge_lists(tmp_path):
    graph = graph_of(REVERSE_SHAPE)
    names = _tracr.reverse_canonical_circuit()
    present = present_of(graph, names)
    scores = np.where(present, np.linspace(0.1, 1.0, len(graph)), np.nan)
    doc = _document(graph, present, scores)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(doc))
    expected = _draw.circuit_dot(
        graph, present, scores=scores, title=f"tracr-reverse · acdc · 15 of {len(graph)} edges"
    )
    assert jacdc.draw(doc, format="dot") == expected
    assert jacdc.draw(path, format="dot") == expected
    assert jacdc.draw(str(path), format="dot") == expected
    bare = _draw.circuit_dot(graph, present, title="15 of 106 edges")
    assert jacdc.draw(names, graph=graph, format="dot") == bare
    assert jacdc.draw(present, graph=graph, format="dot") == bare
    assert jacdc.draw([graph.edge_id(n) for n in names], graph=graph, format="dot") == bare
    # An ACDC result: scores are the metric change at each edge's last (non-skipped) test.
    log = [
        {"edge": graph.edge_id(names[0]), "delta": 0.5, "skipped": False},
        {"edge": graph.edge_id(names[1]), "delta": 9.0, "skipped": True},
    ]
    result = ACDCResult(
        present=present,
        threshold=0.1,
        metric_name="l2",
        zero_ablation=False,
        abs_value=False,
        engine="fast",
        metric=0.0,
        initial_metric=0.0,
        n_tests=1,
        n_forward=1,
        n_calls=1,
        log=log,
        graph_shape=REVERSE_SHAPE,
    )
    p = parse(jacdc.draw(result, format="dot"))
    widths = {a["tooltip"]: a.get("penwidth") for _, _, a in p["edges"]}
    assert widths[f"{names[0]}: score 0.5"] == f"{_draw._MAX_WIDTH:.2f}"
    assert widths[f"{names[1]}: score untested"] is None


@pytest.mark.unchecked  # the errors users get
def test_draw_errors_say_what_is_wrong(tmp_path):
    graph = graph_of(REVERSE_SHAPE)
    doc = _document(graph, present_of(graph, _tracr.reverse_canonical_circuit()))
    with pytest.raises(ValueError, match="no `graph` entry"):
        jacdc.draw({k: v for k, v in doc.items() if k != "graph"})
    bad = dict(doc, edges=doc["edges"] + [{"id": len(graph), "present": True}])
    with pytest.raises(ValueError, match=r"id 106, outside this graph's \[0, 106\)"):
        jacdc.draw(bad)
    with pytest.raises(TypeError, match="pass `graph=`"):
        jacdc.draw(["blocks.0.hook_mlp_in <- hook_embed"])
    with pytest.raises(ValueError, match="format must be"):
        jacdc.draw(doc, format="png")
    with pytest.raises(FileNotFoundError):
        jacdc.draw(tmp_path / "missing.json")


def test_without_graphviz_draw_returns_dot(monkeypatch):
    graph = graph_of(REVERSE_SHAPE)
    present = present_of(graph, _tracr.reverse_canonical_circuit())
    monkeypatch.setattr(_draw.shutil, "which", lambda name: None)
    assert not _draw.have_graphviz()
    out = jacdc.draw(present, graph=graph)
    assert out.startswith("digraph circuit {") and not isinstance(out, _draw.SVG)
    with pytest.raises(RuntimeError, match="Graphviz's `dot` program is not on PATH"):
        _draw.render(out)


@needs_graphviz
def test_draw_returns_svg_for_notebooks():
    graph = graph_of(REVERSE_SHAPE)
    svg = jacdc.draw(_tracr.reverse_canonical_circuit(), graph=graph)
    assert isinstance(svg, _draw.SVG) and svg._repr_svg_() == svg
    assert "<svg" in svg and "L3.H0" in svg


@needs_graphviz
@pytest.mark.parametrize("which", ["reverse", "ioi-65"])
def test_pictures_have_a_sane_aspect_ratio(which):
    if which == "reverse":
        graph, names = graph_of(REVERSE_SHAPE), _tracr.reverse_canonical_circuit()
    else:  # 65 edges of the IOI circuit: the size that drew as a 6417 x 281 px strip
        graph, ioi = graph_of(_canonical.GPT2_SHAPE), _canonical.ioi_circuit()
        names = [ioi[i] for i in np.random.default_rng(0).choice(len(ioi), 65, replace=False)]
    png = _draw.render(_draw.circuit_dot(graph, present_of(graph, names)), "png")
    width, height = _draw.image_size(png)
    assert 1 / 3 < width / height < 3, (width, height)


def test_cli_draw_writes_the_drawing(tmp_path, capsys):
    graph = graph_of(REVERSE_SHAPE)
    present = present_of(graph, _tracr.reverse_canonical_circuit())
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_document(graph, present)))
    assert _cli.main(["draw", str(path), "--format", "dot"]) == 0
    assert (tmp_path / "result.dot").read_text() == jacdc.draw(path, format="dot")
    if _draw.have_graphviz():
        assert _cli.main(["draw", str(path), "--format", "png"]) == 0
        assert _draw.image_size((tmp_path / "result.png").read_bytes())[0] > 0
    assert "wrote" in capsys.readouterr().out


def test_result_files_carry_the_same_drawing(tmp_path):
    graph = graph_of(REVERSE_SHAPE)
    present = present_of(graph, _tracr.reverse_canonical_circuit())
    scores = np.where(present, np.linspace(-1.0, 2.0, len(graph)), np.nan)
    paths = _results.write_result(
        tmp_path,
        algorithm="acdc",
        task="tracr-reverse",
        model_config={"n_layers": 4},
        graph=graph,
        present=present,
        hyperparameters={"threshold": 0.1},
        metrics={"validation": {"l2": 0.0}},
        scores=scores,
    )
    dot = paths["dot"].read_text()
    assert dot == jacdc.draw(paths["json"], format="dot")  # the file and `draw` agree
    assert "penwidth" in dot and parse(dot)["legend"]
    if _draw.have_graphviz():
        assert paths["svg"].read_text().lstrip().startswith(("<?xml", "<svg"))
