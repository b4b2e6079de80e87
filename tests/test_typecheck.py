"""The test session runs with jaxtyping's runtime checks on (`conftest.py`): these tests show the
hook is installed and catches what the annotations promise."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import TYPECHECKED, unchecked
from jaxtyping import TypeCheckError

import jacdc
from jacdc.models import Transformer, TransformerConfig, empty_sources


pytestmark = pytest.mark.skipif(not TYPECHECKED, reason="JACDC_TYPECHECK=0")


def test_mask_fields_are_checked_together():
    shape = jacdc.GraphShape(n_layers=2, n_heads=1, has_mlp=True)
    full = jacdc.EdgeMask.full(shape)
    fields = {name: getattr(full, name) for name in ("q", "k", "v", "mlp", "out", "direct")}
    jacdc.EdgeMask(**fields)  # consistent
    with pytest.raises(TypeCheckError):  # `layer` is 2 in q, k, v and direct but 3 here
        jacdc.EdgeMask(**dict(fields, mlp=jnp.ones((3, shape.n_src))))
    with pytest.raises(TypeCheckError):  # not a float array
        jacdc.EdgeMask(**dict(fields, out=np.ones(shape.n_src, np.int32)))
    jacdc.EdgeMask(**jacdc.graph_of(shape).validity())  # host bools are allowed


def test_forward_arguments_are_checked():
    cfg = TransformerConfig(
        n_layers=1, n_heads=1, d_model=8, d_head=4, d_mlp=16, d_vocab=5, n_ctx=4
    )
    model = Transformer(cfg, key=jr.key(0))
    tokens = jnp.zeros((2, 4), jnp.int32)  # a batch: the forward takes one sequence
    args = (jacdc.EdgeMask.full(model.graph_shape), empty_sources(cfg, 4))
    with pytest.raises(TypeCheckError):
        model(tokens, *args)
    with unchecked(), pytest.raises(ValueError, match="unbatched sequence"):
        model(tokens, *args)
