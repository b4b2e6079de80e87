"""The XLA compile options jacdc sets, and the jit that applies them per backend.

**YNNPACK fusions off on CPU.** XLA:CPU (jaxlib 0.10) hands elementwise chains, reductions and
dots to YNNPACK "library fusions" by default. jacdc's compiled evaluators and HISP's gradient
are compiled without them (`xla_cpu_experimental_ynn_fusion_type=""`):

- speed: a reduction over several operands runs several times slower inside a YNNPACK fusion
    than in XLA's own loop fusion. Measured on this project's 2-core AVX2 CPU (`jax.jit` of the
    expression over `(10, 150, 50259)` float32 operands, warm, best of 3): `sum(p * l, -1)`
    0.806 s with the fusions, 0.178 s without; the KL metric (`log_softmax` and the weighted
    sum) 1.316 s / 0.321 s. Whole evaluator calls: 2.05 s / 1.15 s per edge test into the output
    on the induction shape, 0.153 s / 0.079 s on the GPT-2-small IOI shape
    (`benchmarks/evaluator_calls.py --ynn both`);
- correctness: HISP's gradient came out NaN inside them (see [`jacdc._hisp`][]).

`JACDC_CPU_YNN=1` keeps XLA's default (to measure the difference). Other backends get no
options.
"""

import functools
import os

import equinox as eqx
import jax


CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compile_options() -> dict | None:
    """The compile options for the default backend: [`CPU_OPTIONS`][] on CPU (unless
    `JACDC_CPU_YNN=1`), else `None`."""
    if jax.default_backend() != "cpu" or os.environ.get("JACDC_CPU_YNN", "0") == "1":
        return None
    return dict(CPU_OPTIONS)


class backend_jit:
    """`eqx.filter_jit(fn)` with [`compile_options`][] of the backend in use when first called
    (chosen then, so importing jacdc never starts a backend). Calls and `.lower(...)` as
    `filter_jit`'s; the undecorated function is `__wrapped__`."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._jitted = None

    def _get(self):
        if self._jitted is None:
            options = compile_options()
            kwargs = {} if options is None else {"compiler_options": options}
            self._jitted = eqx.filter_jit(self._fn, **kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._get().lower(*args, **kwargs)
