import equinox as eqx
import jax


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-5):
    if jax.default_backend() == "gpu":
        atol = max(atol, 1e-3)  # TF32 matmuls on GPU
    # `tree_equal` returns Python `False` on a structure mismatch, otherwise a JAX bool scalar.
    return bool(eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol))
