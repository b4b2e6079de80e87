"""Matmul precision: one setting for every algorithm, recorded in every result.

JAX computes float32 matrix products at the backend's *default* precision, which on recent
NVIDIA GPUs is TF32 (10 mantissa bits) and on TPUs bfloat16 passes. The original implementation
ran full float32 (PyTorch's default), and at the paper's smallest ACDC thresholds (1e-6 on the KL
grids) that rounding decides edges. So jacdc runs at `"highest"` (full float32) unless told
otherwise; on CPUs every setting computes float32 anyway.

Settings (JAX's names, see `jax.default_matmul_precision`): `"highest"` / `"float32"` (exact
float32), `"high"` / `"tensorfloat32"` (TF32 or bf16x3, faster on GPUs), `"default"` /
`"bfloat16"` (the fastest: one bfloat16 pass on TPUs, TF32 on GPUs).

- [`matmul_precision`][] is the context manager; every computation traced inside it uses the
    setting (it is part of JAX's compilation cache key, so switching recompiles).
- The public algorithms (`jacdc.acdc`, `acdc_sweep`, `subnetwork_probing`, `sp_sweep`, `hisp`,
    `hisp_scores`, `eap_scores`, `eap_ig_scores`, `edge_pruning`, `edge_pruning_sweep`,
    `roc_report`) take `precision=` (default: the enclosing `jax.default_matmul_precision`
    setting if one is active, else `"highest"`), through [`with_precision`][].
- The CLI's `--precision` sets it for a whole command and writes it into `result.json`
    (`hyperparameters.precision`) and the ROC and paper reports (`settings.precision`).
"""

import contextlib
import functools as ft
from collections.abc import Callable

import jax


PRECISIONS = ("highest", "float32", "high", "tensorfloat32", "default", "bfloat16")
DEFAULT_PRECISION = "highest"


def resolve(precision: str | None) -> str:
    """The setting to use: `precision` if given (checked), else the active
    `jax.default_matmul_precision` setting, else `"highest"`."""
    if precision is None:
        active = jax.config.jax_default_matmul_precision
        return DEFAULT_PRECISION if active is None else str(active)
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown matmul precision {precision!r}; use one of {', '.join(PRECISIONS)} "
            "(highest = exact float32, the default)."
        )
    return precision


@contextlib.contextmanager
def matmul_precision(precision: str | None = None):
    """Runs the enclosed computations at `precision` (see the module docstring); yields the
    resolved setting."""
    name = resolve(precision)
    with jax.default_matmul_precision(name):
        yield name


def with_precision(fn: Callable) -> Callable:
    """`fn` with an extra keyword argument `precision=None`, run inside
    [`matmul_precision`][]."""

    @ft.wraps(fn)
    def wrapper(*args, precision: str | None = None, **kwargs):
        with matmul_precision(precision):
            return fn(*args, **kwargs)

    wrapper.__doc__ = (fn.__doc__ or "") + (
        '\n\n    `precision`: matmul precision (`jacdc._precision`; default `"highest"`).'
    )
    return wrapper
