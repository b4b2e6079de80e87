"""The computational graph of a transformer in the ACDC convention, and the edge mask.

**Sources** (residual writers), in topological order, index on the `src` axis:
`[embed..., L0.H0, ..., L0.H{H-1}, L0.MLP, L1.H0, ...]`. There is one embedding source
(`blocks.0.hook_resid_pre`; token + position, or token alone for shortformer models whose
positions are added to q and k only and so are not in the graph), or two for tracr models
(`hook_embed`, `hook_pos_embed`). Attention-only models have no MLP sources.

**Receivers** (residual readers): the q, k and v input of every head (each taken before its own
LayerNorm), the MLP input of every layer, and the output (`hook_resid_post` of the last layer,
before the final LayerNorm and unembedding).

**Edges** (the ones ACDC counts):

- ADDITION: every source to every later receiver. A head feeds its own layer's MLP input (not in
  *parallel* blocks, GPT-NeoX's, where attention and MLP read the same residual stream); an MLP
  feeds the next layers and the output; the embeddings feed every receiver.
- DIRECT: per head, `q_input -> q`, `k_input -> k`, `v_input -> v`. Removing one substitutes the
  head's corrupted q, k or v vector.

Placeholder edges (`q -> result`, `mlp_in -> mlp_out`) are never tested nor counted; they only
matter for the node bookkeeping in [`jacdc.acdc`][].

Every counted edge has a stable id (its position in `Graph.edges`) and a TransformerLens-style name
`"<receiver> <- <sender>"`, e.g. `"blocks.9.hook_q_input[9] <- blocks.7.attn.hook_result[3]"`.
Ids are ordered layer by layer; within a layer head by head, each head's q, k, v inputs (sources
in topological order) each followed by its direct edge, then the MLP input; the output last.
"""

import dataclasses
import functools as ft
from typing import Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Shaped


FIELDS = ("q", "k", "v", "mlp", "out", "direct")
_HostOrDevice = Array | np.ndarray
QKV = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class GraphShape:
    """What the graph depends on: nothing but these five numbers.

    **Arguments:**

    - `n_layers`, `n_heads`: the transformer's depth and (query) heads per layer.
    - `has_mlp`: whether each layer has an MLP (False for attention-only models).
    - `n_embed`: number of embedding source nodes: 1, or 2 (token and position) for tracr.
    - `parallel`: parallel attention and MLP blocks (GPT-NeoX): a layer's MLP input does not
        read that layer's heads.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    n_embed: int = 1
    parallel: bool = False

    def __post_init__(self):
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(
                f"A graph needs at least one layer and one head, got n_layers={self.n_layers}, "
                f"n_heads={self.n_heads}."
            )
        if self.n_embed not in (1, 2):
            raise ValueError(
                f"n_embed must be 1 (one embedding node) or 2 (token and position nodes, as in "
                f"tracr), got {self.n_embed}."
            )

    @property
    def per_layer(self) -> int:
        """Sources per layer: the heads, plus the MLP if there is one."""
        return self.n_heads + int(self.has_mlp)

    @property
    def n_src(self) -> int:
        return self.n_embed + self.n_layers * self.per_layer

    def head_src(self, layer: int, head: int) -> int:
        return self.n_embed + layer * self.per_layer + head

    def mlp_src(self, layer: int) -> int:
        if not self.has_mlp:
            raise ValueError("This graph has no MLP sources (attention-only model).")
        return self.n_embed + layer * self.per_layer + self.n_heads

    def n_src_before_layer(self, layer: int) -> int:
        """Number of sources written before layer `layer`'s attention reads the residual."""
        return self.n_embed + layer * self.per_layer

    def n_src_before_mlp(self, layer: int) -> int:
        """Number of sources that layer `layer`'s MLP input can read (includes its own heads,
        except in parallel blocks)."""
        return self.n_embed + layer * self.per_layer + (0 if self.parallel else self.n_heads)

    def n_src_before_stage(self, stage: int) -> int:
        """Number of sources written before `stage` (`2 l`: layer `l`'s attention, `2 l + 1`:
        its MLP, `2 L`: the output) in source order: the prefix a forward restarted at `stage`
        reads. For an MLP stage it includes the layer's heads, also in parallel blocks (they
        are computed before the MLP writes, and the MLP stage does not change them)."""
        if stage <= 0:
            return 0
        if stage >= 2 * self.n_layers:
            return self.n_src
        layer, part = divmod(stage, 2)
        return self.n_src_before_layer(layer) + part * self.n_heads

    def src_layer(self, src: int) -> int:
        """The layer of a source; -1 for embeddings."""
        if src < self.n_embed:
            return -1
        return (src - self.n_embed) // self.per_layer

    def src_kind(self, src: int) -> Literal["embed", "head", "mlp"]:
        if src < self.n_embed:
            return "embed"
        within = (src - self.n_embed) % self.per_layer
        return "head" if within < self.n_heads else "mlp"

    def src_head(self, src: int) -> int:
        return (src - self.n_embed) % self.per_layer

    def src_name(self, src: int) -> str:
        if not 0 <= src < self.n_src:
            raise ValueError(f"Source index {src} is out of range [0, {self.n_src}).")
        kind = self.src_kind(src)
        if kind == "embed":
            if self.n_embed == 1:
                return "blocks.0.hook_resid_pre"
            return ("hook_embed", "hook_pos_embed")[src]
        layer = self.src_layer(src)
        if kind == "head":
            return f"blocks.{layer}.attn.hook_result[{self.src_head(src)}]"
        return f"blocks.{layer}.hook_mlp_out"

    def n_edges(self) -> int:
        """The counted edge total (ADDITION + DIRECT), by the closed formula of the reference."""
        L, H, m, E = self.n_layers, self.n_heads, int(self.has_mlp), self.n_embed
        own = 0 if self.parallel else 1  # does a layer's MLP read that layer's heads?
        add_qkv = 3 * H * (L * E + (H + m) * L * (L - 1) // 2)
        add_mlp = m * (L * E + H * L * (L - 1 + 2 * own) // 2 + m * L * (L - 1) // 2)
        add_out = E + L * H + m * L
        return add_qkv + add_mlp + add_out + 3 * H * L


class Edge(NamedTuple):
    """Host-side identity of one counted edge.

    `field` names the mask field that holds it; `index` is the position inside that field:
    `(layer, head, src)` for q/k/v, `(layer, src)` for mlp, `(src,)` for out and
    `(layer, head, channel)` for direct (channel 0, 1, 2 = q, k, v).
    """

    field: Literal["q", "k", "v", "mlp", "out", "direct"]
    index: tuple[int, ...]


class EdgeMask(eqx.Module):
    """Weight on every edge of the residual-stream graph.

    `1.0` keeps the clean (online) activation flowing along an edge, `0.0` replaces it with the
    corrupted activation; values in between interpolate. Entries for edges that do not exist (a
    source that is not upstream of the receiver) are ignored by the forward pass and receive
    exactly zero gradient. Shapes depend only on the [`jacdc.GraphShape`][]:

    - `q`, `k`, `v`: `(layer, head, src)`, the ADDITION edges into each head's q/k/v input;
    - `mlp`: `(layer, src)`, into each MLP input (all entries invalid for attention-only models);
    - `out`: `(src,)`, into the output;
    - `direct`: `(layer, head, 3)`, the q/k/v direct edges.

    Masks may carry extra leading axes (a batch of candidate circuits) for use under `jax.vmap`.
    The forward pass takes JAX float arrays; host-side masks hold NumPy floats
    ([`jacdc.Graph.from_vector`][] of a NumPy vector) or bools ([`jacdc.Graph.validity_mask`][]).
    """

    q: Float[_HostOrDevice, "*batch layer head src"] | Bool[np.ndarray, "*batch layer head src"]
    k: Float[_HostOrDevice, "*batch layer head src"] | Bool[np.ndarray, "*batch layer head src"]
    v: Float[_HostOrDevice, "*batch layer head src"] | Bool[np.ndarray, "*batch layer head src"]
    mlp: Float[_HostOrDevice, "*batch layer src"] | Bool[np.ndarray, "*batch layer src"]
    out: Float[_HostOrDevice, "*batch src"] | Bool[np.ndarray, "*batch src"]
    direct: Float[_HostOrDevice, "*batch layer head 3"] | Bool[np.ndarray, "*batch layer head 3"]

    @classmethod
    def full(cls, shape: GraphShape, fill: float = 1.0, dtype=jnp.float32) -> "EdgeMask":
        """A mask with every entry equal to `fill` (1.0: the clean model; 0.0: the corrupted
        run)."""
        L, H, n = shape.n_layers, shape.n_heads, shape.n_src
        heads = jnp.full((L, H, n), fill, dtype)
        return cls(
            q=heads,
            k=heads,
            v=heads,
            mlp=jnp.full((L, n), fill, dtype),
            out=jnp.full((n,), fill, dtype),
            direct=jnp.full((L, H, 3), fill, dtype),
        )

    def check_shape(self, shape: GraphShape, where: str = "the mask") -> None:
        """Raises a `ValueError` naming the field if this mask does not fit `shape`."""
        expected = field_shapes(shape)
        for name in FIELDS:
            got = tuple(getattr(self, name).shape)
            want = expected[name]
            if got[len(got) - len(want) :] != want or len(got) < len(want):
                raise ValueError(
                    f"{where}: field `{name}` has shape {got}, but this model's graph "
                    f"({shape.n_layers} layers, {shape.n_heads} heads, {shape.n_src} sources) "
                    f"needs {want} (optionally with leading batch axes). Build masks with "
                    "`EdgeMask.full(model.graph_shape)` or `graph.mask_from_edges(...)`."
                )


def field_shapes(shape: GraphShape) -> dict[str, tuple[int, ...]]:
    L, H, n = shape.n_layers, shape.n_heads, shape.n_src
    return {
        "q": (L, H, n),
        "k": (L, H, n),
        "v": (L, H, n),
        "mlp": (L, n),
        "out": (n,),
        "direct": (L, H, 3),
    }


class Graph:
    """Host-side index of a graph's counted edges: ids, names, validity and conversions.

    Build it with [`jacdc.graph_of`][] (cached per shape). Everything here is NumPy or plain
    Python, for loops, reports and tests; the device side only ever sees [`jacdc.EdgeMask`][]s.
    """

    def __init__(self, shape: GraphShape):
        self.shape = shape
        edges: list[Edge] = []
        L, H = shape.n_layers, shape.n_heads
        for layer in range(L):
            n_before = shape.n_src_before_layer(layer)
            for head in range(H):
                for channel, name in enumerate(QKV):
                    edges.extend(Edge(name, (layer, head, s)) for s in range(n_before))
                    edges.append(Edge("direct", (layer, head, channel)))
            if shape.has_mlp:
                edges.extend(Edge("mlp", (layer, s)) for s in range(shape.n_src_before_mlp(layer)))
        edges.extend(Edge("out", (s,)) for s in range(shape.n_src))
        self.edges: tuple[Edge, ...] = tuple(edges)
        if len(self.edges) != shape.n_edges():
            raise AssertionError(
                f"internal: enumerated {len(self.edges)} edges, formula says {shape.n_edges()}"
            )
        self.id_of: dict[Edge, int] = {e: i for i, e in enumerate(self.edges)}
        self.names: tuple[str, ...] = tuple(self._name(e) for e in self.edges)
        self.id_of_name: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        # Per field: the edge ids stored in it and their positions, for vectorised conversion.
        self._field_ids: dict[str, np.ndarray] = {}
        self._field_pos: dict[str, tuple[np.ndarray, ...]] = {}
        for name in FIELDS:
            ids = np.array([i for i, e in enumerate(self.edges) if e.field == name], np.int64)
            ndim = len(field_shapes(shape)[name])
            pos = tuple(
                np.array([self.edges[i].index[d] for i in ids], np.int64) for d in range(ndim)
            )
            self._field_ids[name] = ids
            self._field_pos[name] = pos

    def __len__(self) -> int:
        return len(self.edges)

    # ---- names -------------------------------------------------------------------------
    def receiver_name(self, edge: Edge) -> str:
        L = self.shape.n_layers
        if edge.field in QKV:
            layer, head, _ = edge.index
            return f"blocks.{layer}.hook_{edge.field}_input[{head}]"
        if edge.field == "mlp":
            return f"blocks.{edge.index[0]}.hook_mlp_in"
        if edge.field == "out":
            return f"blocks.{L - 1}.hook_resid_post"
        layer, head, channel = edge.index
        return f"blocks.{layer}.attn.hook_{QKV[channel]}[{head}]"

    def sender_name(self, edge: Edge) -> str:
        if edge.field == "direct":
            layer, head, channel = edge.index
            return f"blocks.{layer}.hook_{QKV[channel]}_input[{head}]"
        return self.shape.src_name(edge.index[-1])

    def _name(self, edge: Edge) -> str:
        return f"{self.receiver_name(edge)} <- {self.sender_name(edge)}"

    def name(self, edge_id: int) -> str:
        return self.names[edge_id]

    def edge_id(self, name_or_edge: "str | Edge") -> int:
        """The stable id of an edge given by name or by [`jacdc.Edge`][]."""
        table = self.id_of_name if isinstance(name_or_edge, str) else self.id_of
        try:
            return table[name_or_edge]  # type: ignore[index]
        except KeyError:
            raise ValueError(
                f"{name_or_edge!r} is not an edge of this graph ({len(self)} edges). Names look "
                f"like {self.names[0]!r}; list them with `graph.names`."
            ) from None

    # ---- masks -------------------------------------------------------------------------
    def validity(self) -> dict[str, np.ndarray]:
        """Boolean arrays, one per mask field, True where an entry is a real edge."""
        out = {}
        for name, shp in field_shapes(self.shape).items():
            valid = np.zeros(shp, bool)
            valid[self._field_pos[name]] = True
            out[name] = valid
        return out

    def validity_mask(self) -> EdgeMask:
        """The validity as an [`jacdc.EdgeMask`][] of NumPy bools."""
        return EdgeMask(**self.validity())

    def to_vector(self, mask: EdgeMask) -> Float[Array, "*batch edge"]:
        """The mask's values in edge-id order (leading batch axes are kept)."""
        mask.check_shape(self.shape)
        parts = [
            jnp.asarray(getattr(mask, name))[(Ellipsis,) + self._field_pos[name]] for name in FIELDS
        ]
        order = np.concatenate([self._field_ids[name] for name in FIELDS])
        inverse = np.empty(len(self.edges), np.int64)
        inverse[order] = np.arange(len(self.edges))
        return jnp.concatenate(parts, axis=-1)[..., inverse]

    def from_vector(
        self, values: Shaped[ArrayLike, "*batch edge"], *, fill: float = 0.0
    ) -> EdgeMask:
        """Builds an [`jacdc.EdgeMask`][] from per-edge values (in edge-id order; floats, or bools
        for a 0/1 circuit). Invalid entries are set to `fill` (they are ignored by the forward
        pass anyway)."""
        if isinstance(values, np.ndarray):
            # Host path (no device dispatch per field): the reference engine builds one mask per
            # forward pass this way.
            if values.shape[-1:] != (len(self.edges),):
                raise ValueError(
                    f"Expected per-edge values with last axis {len(self.edges)} (this graph's "
                    f"edge count), got shape {values.shape}."
                )
            batch = values.shape[:-1]
            host = {}
            for name, shp in field_shapes(self.shape).items():
                base = np.full(batch + shp, fill, np.float32)
                base[(Ellipsis,) + self._field_pos[name]] = values[..., self._field_ids[name]]
                host[name] = base
            return EdgeMask(**host)
        values = jnp.asarray(values)
        if values.shape[-1:] != (len(self.edges),):
            raise ValueError(
                f"Expected per-edge values with last axis {len(self.edges)} (this graph's edge "
                f"count), got shape {values.shape}."
            )
        batch = values.shape[:-1]
        dtype = values.dtype if jnp.issubdtype(values.dtype, jnp.floating) else jnp.float32
        fields = {}
        for name, shp in field_shapes(self.shape).items():
            base = jnp.full(batch + shp, fill, dtype)
            idx = (Ellipsis,) + self._field_pos[name]
            fields[name] = base.at[idx].set(values[..., self._field_ids[name]].astype(dtype))
        return EdgeMask(**fields)

    def mask_from_edges(self, present) -> EdgeMask:
        """A 0/1 mask with exactly the given edges present. `present` holds edge ids, names or
        [`jacdc.Edge`][]s."""
        vec = np.zeros(len(self.edges), np.float32)
        for e in present:
            vec[e if isinstance(e, (int, np.integer)) else self.edge_id(e)] = 1.0
        return self.from_vector(vec)

    def edges_from_mask(self, mask: EdgeMask, threshold: float = 0.5) -> list[int]:
        """Ids of the edges whose mask value is above `threshold` (default: present in a 0/1
        mask)."""
        vec = np.asarray(self.to_vector(mask))
        if vec.ndim != 1:
            raise ValueError(f"Expected one mask, got a batch of shape {vec.shape[:-1]}.")
        return [int(i) for i in np.nonzero(vec > threshold)[0]]


@ft.lru_cache(maxsize=64)
def graph_of(shape: GraphShape) -> Graph:
    """The (cached) [`jacdc.Graph`][] of a [`jacdc.GraphShape`][]."""
    return Graph(shape)


def set_edge(mask: EdgeMask, edge: Edge, value) -> EdgeMask:
    """Returns a copy of `mask` with one edge set to `value`."""
    return eqx.tree_at(
        lambda m: getattr(m, edge.field),
        mask,
        replace_fn=lambda array: jnp.asarray(array).at[(Ellipsis,) + tuple(edge.index)].set(value),
    )
