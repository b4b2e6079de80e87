import contextlib
import os

import chex
import jax
import jaxtyping


def _tolerance(atol: float) -> float:
    if jax.default_backend() == "gpu":
        return max(atol, 1e-3)  # TF32 matmuls on GPU
    return atol


def assert_trees_close(x, y, *, rtol=1e-5, atol=1e-5) -> None:
    """Asserts two pytrees (masks, `Sources`, parameters) have the same structure and leaves
    equal within tolerance; the failure names the leaf path and the largest difference
    (`chex.assert_trees_all_close`). On GPU `atol` is at least 1e-3 (TF32 matmuls)."""
    chex.assert_trees_all_close(x, y, rtol=rtol, atol=_tolerance(atol))


# The tracr canonical circuits of the reference (§4.5), in jacdc names (placeholder edges left
# out): written out here, independently of `jacdc.tasks`, for the ROC and HISP tests.
REVERSE = [
    "blocks.3.hook_resid_post <- blocks.3.attn.hook_result[0]",
    "blocks.3.hook_q_input[0] <- blocks.2.hook_mlp_out",
    "blocks.3.hook_k_input[0] <- hook_pos_embed",
    "blocks.3.hook_v_input[0] <- hook_embed",
    "blocks.2.hook_mlp_in <- blocks.1.hook_mlp_out",
    "blocks.1.hook_mlp_in <- blocks.0.hook_mlp_out",
    "blocks.1.hook_mlp_in <- hook_embed",
    "blocks.1.hook_mlp_in <- hook_pos_embed",
    "blocks.0.hook_mlp_in <- blocks.0.attn.hook_result[0]",
    "blocks.0.hook_mlp_in <- hook_embed",
    "blocks.0.hook_v_input[0] <- hook_embed",
    "blocks.3.attn.hook_q[0] <- blocks.3.hook_q_input[0]",
    "blocks.3.attn.hook_k[0] <- blocks.3.hook_k_input[0]",
    "blocks.3.attn.hook_v[0] <- blocks.3.hook_v_input[0]",
    "blocks.0.attn.hook_v[0] <- blocks.0.hook_v_input[0]",
]
PROPORTION = [
    "blocks.1.hook_resid_post <- blocks.1.attn.hook_result[0]",
    "blocks.1.hook_q_input[0] <- hook_embed",
    "blocks.1.hook_q_input[0] <- hook_pos_embed",
    "blocks.1.hook_k_input[0] <- hook_embed",
    "blocks.1.hook_k_input[0] <- hook_pos_embed",
    "blocks.1.hook_v_input[0] <- blocks.0.hook_mlp_out",
    "blocks.0.hook_mlp_in <- hook_embed",
    "blocks.1.attn.hook_q[0] <- blocks.1.hook_q_input[0]",
    "blocks.1.attn.hook_k[0] <- blocks.1.hook_k_input[0]",
    "blocks.1.attn.hook_v[0] <- blocks.1.hook_v_input[0]",
]


@contextlib.contextmanager
def unchecked():
    """Switches jaxtyping's runtime checks (installed for the test session by `conftest.py`)
    off, for tests of the error a user gets: users run without the checks, whose own
    `TypeCheckError` would otherwise come first."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)


TYPECHECKED = os.environ.get("JACDC_TYPECHECK", "1") != "0"
"""Whether this session runs with jaxtyping's runtime checks (see `conftest.py`)."""
