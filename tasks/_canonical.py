"""Canonical ("ground-truth") circuits of IOI, Greater-Than and Docstring, as edge-name lists.

Each is built from the published head lists and construction rules (reference §4), in the edge
names of [`jacdc.Graph`][] (`"<receiver> <- <sender>"`), and contains only *counted* edges
(ADDITION and DIRECT; placeholders never appear). Sizes: IOI 1,041 edges / 196 nodes,
Greater-Than 262 / 77, Docstring 37 / 34, where a node is present if it touches a present
counted edge and MLP inputs are not nodes (the node convention of the paper's ROC; see
[`circuit_nodes`][]). Induction has no canonical circuit.

Heads are written `(layer, head)`.
"""

from collections.abc import Iterable

from jacdc._graph import GraphShape, graph_of


GPT2_SHAPE = GraphShape(n_layers=12, n_heads=12, has_mlp=True)
ATTN_4L_SHAPE = GraphShape(n_layers=4, n_heads=8, has_mlp=False)

EMBED = "blocks.0.hook_resid_pre"
QKV = ("q", "k", "v")


def _result(layer: int, head: int) -> str:
    return f"blocks.{layer}.attn.hook_result[{head}]"


def _mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def _mlp_in(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_in"


def _head_input(layer: int, head: int, channel: str) -> str:
    return f"blocks.{layer}.hook_{channel}_input[{head}]"


def _direct(layer: int, head: int, channel: str) -> str:
    return f"blocks.{layer}.attn.hook_{channel}[{head}] <- {_head_input(layer, head, channel)}"


def _resid_post(n_layers: int) -> str:
    return f"blocks.{n_layers - 1}.hook_resid_post"


def _edge(receiver: str, sender: str) -> str:
    return f"{receiver} <- {sender}"


def _sorted_by_id(shape: GraphShape, names: Iterable[str]) -> list[str]:
    """Deduplicated and in edge-id order; every name must be an edge of the graph."""
    graph = graph_of(shape)
    return sorted(set(names), key=graph.edge_id)


# ---------------------------------------------------------------------------------------------
# IOI (Wang et al. 2022)

IOI_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "backup name mover": (
        (10, 10),
        (10, 6),
        (10, 2),
        (10, 1),
        (11, 2),
        (9, 7),
        (9, 0),
        (11, 9),
    ),
    "negative name mover": ((10, 7), (11, 10)),
    "s-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}
"""The 26 IOI circuit heads by class (7.1 excluded as "unclear", as in the paper's code)."""

# (sender class, receiver class, receiver channels). "INPUT" is the embedding and every MLP
# output; "OUTPUT" is the output and every MLP input.
_IOI_CONNECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("INPUT", "previous token", ("q", "k", "v")),
    ("INPUT", "duplicate token", ("q", "k", "v")),
    ("INPUT", "s-inhibition", ("q",)),
    ("INPUT", "negative name mover", ("k", "v")),
    ("INPUT", "name mover", ("k", "v")),
    ("INPUT", "backup name mover", ("k", "v")),
    ("previous token", "induction", ("k", "v")),
    ("induction", "s-inhibition", ("k", "v")),
    ("duplicate token", "s-inhibition", ("k", "v")),
    ("s-inhibition", "negative name mover", ("q",)),
    ("s-inhibition", "name mover", ("q",)),
    ("s-inhibition", "backup name mover", ("q",)),
    ("negative name mover", "OUTPUT", ()),
    ("name mover", "OUTPUT", ()),
    ("backup name mover", "OUTPUT", ()),
)


def ioi_circuit() -> list[str]:
    """The canonical IOI circuit on GPT-2 small: 1,041 edges.

    1. From the full graph, keep only the edges that touch no head outside the circuit.
    2. Of those, drop every edge from the embedding or a head into a circuit head's q/k/v input,
       and every circuit head -> output edge. What stays is all MLP traffic (embedding and circuit
       heads -> MLP inputs, MLP -> MLP, MLP -> circuit-head inputs, MLP -> output), the
       embedding -> output edge, and the circuit heads' direct q/k/v edges.
    3. Add the class-level connections of [`IOI_HEADS`][] (INPUT = embedding + MLP outputs,
       OUTPUT = output + MLP inputs), only where the receiver's layer is later than the
       sender's (an MLP counts as its layer, the output as layer 12, the embedding as -1).
    """
    shape = GPT2_SHAPE
    graph = graph_of(shape)
    circuit_heads = {h for heads in IOI_HEADS.values() for h in heads}
    circuit_results = {_result(*h) for h in circuit_heads}
    all_results = {_result(l, h) for l in range(12) for h in range(12)}
    out = _resid_post(12)

    kept = []
    for edge_id, edge in enumerate(graph.edges):
        receiver, sender = graph.receiver_name(edge), graph.sender_name(edge)
        if edge.field == "direct":
            if (edge.index[0], edge.index[1]) in circuit_heads:
                kept.append(graph.names[edge_id])
            continue
        if sender in all_results and sender not in circuit_results:
            continue
        if edge.field in QKV:
            if (edge.index[0], edge.index[1]) not in circuit_heads:
                continue
            if sender == EMBED or sender in all_results:
                continue  # step 2: only MLP -> circuit-head inputs stay
        if receiver == out and sender in circuit_results:
            continue
        kept.append(graph.names[edge_id])

    def senders(cls: str) -> list[tuple[str, int]]:
        if cls == "INPUT":
            return [(EMBED, -1)] + [(_mlp_out(l), l) for l in range(12)]
        return [(_result(l, h), l) for l, h in IOI_HEADS[cls]]

    def receivers(cls: str, channels: tuple[str, ...]) -> list[tuple[str, int]]:
        if cls == "OUTPUT":
            return [(out, 12)] + [(_mlp_in(l), l) for l in range(12)]
        return [(_head_input(l, h, c), l) for l, h in IOI_HEADS[cls] for c in channels]

    for src_cls, dst_cls, channels in _IOI_CONNECTIONS:
        for sender, s_layer in senders(src_cls):
            for receiver, r_layer in receivers(dst_cls, channels):
                if r_layer > s_layer:
                    kept.append(_edge(receiver, sender))
    return _sorted_by_id(shape, kept)


# ---------------------------------------------------------------------------------------------
# Greater-Than (Hanna et al. 2023)

GREATER_THAN_GROUPS: dict[str, tuple] = {
    "0305": ((0, 3), (0, 5)),
    "01": ((0, 1),),
    "MEARLY": (0, 1, 2, 3),
    "AMID": ((5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)),
    "MLATE": (8, 9, 10, 11),
}
"""Greater-Than circuit groups: heads as `(layer, head)`, MLPs as layer ints."""


def _gt_outputs(group: str) -> list[tuple[str, int]]:
    return [
        (_mlp_out(m), m) if isinstance(m, int) else (_result(*m), m[0])
        for m in GREATER_THAN_GROUPS[group]
    ]


def _gt_inputs(group: str) -> list[tuple[str, int, str]]:
    """(receiver, layer, kind) for every input of a group's members; kind is "mlp" or "head"."""
    out = []
    for m in GREATER_THAN_GROUPS[group]:
        if isinstance(m, int):
            out.append((_mlp_in(m), m, "mlp"))
        else:
            out.extend((_head_input(m[0], m[1], c), m[0], "head") for c in QKV)
    return out


def greater_than_circuit() -> list[str]:
    """The canonical Greater-Than circuit on GPT-2 small: 262 edges.

    Starting from an empty graph:

    1. embedding -> every input (q/k/v, or MLP input) of the groups 0305, 01 and MEARLY;
    2. AMID and MLATE -> output;
    3. MLPs of the same group connected forward (MEARLY, MLATE);
    4. group pairs 01->MEARLY, 01->AMID, 0305->AMID, MEARLY->AMID, AMID->MLATE: every sender
       output to every receiver input, receiver in a later layer (a head may feed its own
       layer's MLP);
    5. the direct q/k/v edges of every circuit head;
    6. every MLP -> MLP edge among layers 0..8, and every earlier MLP -> the q input of each AMID
       head.
    """
    shape = GPT2_SHAPE
    edges: list[str] = []
    for group in ("0305", "01", "MEARLY"):
        edges += [_edge(r, EMBED) for r, _, _ in _gt_inputs(group)]
    for group in ("AMID", "MLATE"):
        edges += [_edge(_resid_post(12), s) for s, _ in _gt_outputs(group)]

    def connect(src_group: str, dst_group: str) -> None:
        for sender, s_layer in _gt_outputs(src_group):
            s_is_mlp = sender.endswith("hook_mlp_out")
            for receiver, r_layer, kind in _gt_inputs(dst_group):
                later = r_layer > s_layer or (r_layer == s_layer and kind == "mlp" and not s_is_mlp)
                if later:
                    edges.append(_edge(receiver, sender))

    for group in ("MEARLY", "MLATE"):
        connect(group, group)
    for src, dst in (
        ("01", "MEARLY"),
        ("01", "AMID"),
        ("0305", "AMID"),
        ("MEARLY", "AMID"),
        ("AMID", "MLATE"),
    ):
        connect(src, dst)
    heads = [m for g in ("0305", "01", "AMID") for m in GREATER_THAN_GROUPS[g]]
    edges += [_direct(l, h, c) for l, h in heads for c in QKV]
    edges += [_edge(_mlp_in(r), _mlp_out(s)) for r in range(9) for s in range(r)]
    edges += [
        _edge(_head_input(l, h, "q"), _mlp_out(m))
        for l, h in GREATER_THAN_GROUPS["AMID"]
        for m in range(l)
    ]
    return _sorted_by_id(shape, edges)


# ---------------------------------------------------------------------------------------------
# Docstring (Heimersheim & Janiak 2023)

DOCSTRING_HEADS = ((0, 5), (1, 2), (1, 4), (2, 0), (3, 0), (3, 6))
"""The docstring circuit heads on attn-only-4l."""


def docstring_circuit() -> list[str]:
    """The canonical Docstring circuit on attn-only-4l: 37 edges (24 ADDITION, 13 DIRECT).

    - 0.5: v from the embedding. 1.4: v from the embedding and 0.5.
    - 1.2: q and k from the embedding and 0.5.
    - 2.0: q and k from the embedding and 0.5; v from 1.4.
    - 3.0 and 3.6: q from 1.4; k from 2.0 and 1.2; v from the embedding and 0.5; -> output.
    - The direct edge of every q/k/v input used above.
    """
    shape = ATTN_4L_SHAPE
    e, h05, h12, h14, h20 = EMBED, _result(0, 5), _result(1, 2), _result(1, 4), _result(2, 0)
    wiring: list[tuple[tuple[int, int], str, tuple[str, ...]]] = [
        ((0, 5), "v", (e,)),
        ((1, 4), "v", (e, h05)),
        ((1, 2), "q", (e, h05)),
        ((1, 2), "k", (e, h05)),
        ((2, 0), "q", (e, h05)),
        ((2, 0), "k", (e, h05)),
        ((2, 0), "v", (h14,)),
    ]
    for head in ((3, 0), (3, 6)):
        wiring += [(head, "q", (h14,)), (head, "k", (h20, h12)), (head, "v", (e, h05))]
    edges = []
    for (layer, head), channel, senders in wiring:
        edges += [_edge(_head_input(layer, head, channel), s) for s in senders]
        edges.append(_direct(layer, head, channel))
    edges += [_edge(_resid_post(4), _result(3, 0)), _edge(_resid_post(4), _result(3, 6))]
    return _sorted_by_id(shape, edges)


# ---------------------------------------------------------------------------------------------
# Nodes


def circuit_nodes(edge_names: Iterable[str]) -> set[str]:
    """The nodes a set of counted edges touches, in the paper's node-ROC convention: both ends
    of every edge, except MLP inputs (`hook_mlp_in`), which are not nodes there. A head's
    `hook_q_input` and `attn.hook_q` are different nodes."""
    nodes = set()
    for name in edge_names:
        receiver, sender = name.split(" <- ")
        nodes.add(sender)
        if not receiver.endswith("hook_mlp_in"):
            nodes.add(receiver)
    return nodes
