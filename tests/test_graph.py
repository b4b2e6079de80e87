import jax.numpy as jnp
import numpy as np
import pytest

import jacdc


SHAPES = {  # the paper's models: (shape, counted edges, graph nodes)
    "gpt2-small": (jacdc.GraphShape(12, 12, True, 1), 32_923, 1_034),
    "redwood_attn_2l": (jacdc.GraphShape(2, 8, False, 1), 305, 114),
    "attn-only-4l": (jacdc.GraphShape(4, 8, False, 1), 1_377, 226),
    "tracr-reverse": (jacdc.GraphShape(4, 1, True, 2), 106, 39),
    "tracr-proportion": (jacdc.GraphShape(2, 1, True, 2), 38, 21),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_edge_counts(name):
    shape, count, _ = SHAPES[name]
    graph = jacdc.graph_of(shape)
    assert len(graph) == count == shape.n_edges()
    assert len(set(graph.names)) == count
    valid = graph.validity()
    assert sum(int(v.sum()) for v in valid.values()) == count
    n_direct = sum(e.field == "direct" for e in graph.edges)
    assert n_direct == 3 * shape.n_layers * shape.n_heads


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_acdc_walk_visits_every_graph_node(name):
    shape, _, n_nodes = SHAPES[name]
    # The walk leaves out the embedding nodes, which have nothing to test.
    assert len(jacdc.acdc_nodes(shape)) + shape.n_embed == n_nodes


def test_every_gpt2_name_round_trips():
    graph = jacdc.graph_of(SHAPES["gpt2-small"][0])
    for i, name in enumerate(graph.names):
        assert graph.edge_id(name) == i
        assert graph.name(graph.edge_id(graph.edges[i])) == name
    assert graph.names[graph.edge_id("blocks.9.hook_q_input[9] <- blocks.7.attn.hook_result[3]")]
    assert "blocks.0.hook_resid_pre" in graph.names[0]
    assert graph.names[-1] == "blocks.11.hook_resid_post <- blocks.11.hook_mlp_out"


def test_edge_validity_follows_the_layers():
    shape = jacdc.GraphShape(3, 2, True, 1)
    valid = jacdc.graph_of(shape).validity()
    # q/k/v of layer l read the embedding and every source of earlier layers.
    assert valid["q"][1, 0].tolist() == [True] * 4 + [False] * 6
    # An MLP reads its own layer's heads, but not itself.
    assert valid["mlp"][1].tolist() == [True] * 6 + [False] * 4
    assert valid["out"].all() and valid["direct"].all()
    attn_only = jacdc.graph_of(jacdc.GraphShape(2, 2, False)).validity()
    assert not attn_only["mlp"].any()


def test_conversions_round_trip():
    shape = SHAPES["tracr-reverse"][0]
    graph = jacdc.graph_of(shape)
    rng = np.random.default_rng(0)
    values = rng.uniform(size=(3, len(graph))).astype(np.float32)
    host = graph.from_vector(values)  # NumPy path
    device = graph.from_vector(jnp.asarray(values))  # JAX path
    for field in jacdc._graph.FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(host, field)),
                                      np.asarray(getattr(device, field)))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(graph.to_vector(device)), values)
    ids = [3, 17, 50, 105]
    mask = graph.mask_from_edges([graph.names[i] for i in ids])
    assert graph.edges_from_mask(mask) == ids
    edge = graph.edges[17]
    cleared = jacdc.set_edge(mask, edge, 0.0)
    assert graph.edges_from_mask(cleared) == [3, 50, 105]


def test_graph_errors():
    graph = jacdc.graph_of(SHAPES["tracr-proportion"][0])
    with pytest.raises(ValueError, match="not an edge of this graph"):
        graph.edge_id("blocks.7.hook_q_input[0] <- hook_embed")
    with pytest.raises(ValueError, match="last axis 38"):
        graph.from_vector(np.zeros(37, np.float32))
    wrong = jacdc.EdgeMask.full(SHAPES["tracr-reverse"][0])
    with pytest.raises(ValueError, match="field `q` has shape"):
        graph.to_vector(wrong)
    with pytest.raises(ValueError, match="n_embed"):
        jacdc.GraphShape(2, 2, True, 3)
