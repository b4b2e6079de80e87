"""The engines' building blocks, public: for profiling, benchmarks and sizing runs.

Everything a benchmark needs besides the algorithms themselves (`jacdc.acdc_sweep`,
`jacdc.eap_scores`, `jacdc.sp_sweep`, ...), under stable names:

- **Compiled steps.** [`Evaluator`][] (the fast ACDC engine's device side: cached clean sources,
    one compiled evaluator; `evaluator(stage, vecs)`, `evaluator.lower(stage)`),
    [`evaluate_scan`][], [`evaluate_unrolled`][], [`evaluate_suffix`][] (with
    [`suffix_prefix`][]), [`clean_sources`][], [`stacked_blocks`][];
    [`eap_gradient`][] (EAP's mask gradient at `alphas` points) and [`sp_train`][] (`n_steps` SP
    steps of a lambda sweep), jitted.
- **Sizing.** [`auto_candidates`][] and [`forward_flops`][] (the engine's own heuristics); the
    memory model ([`acdc_memory`][], [`eap_memory`][], [`sp_memory`][], [`xla_memory`][],
    [`check_fits`][], [`device_memory`][]); the FLOP floor ([`jacdc._floor`][]:
    [`floor_terms`][], [`stage_floor_flops`][], [`edge_test_floor_flops`][],
    [`edge_test_stages`][], [`run_floor`][], [`executed_flops`][], [`xla_flops`][]).
- **Caches.** [`compile_stats`][] (JAX's traces, compilations and persistent-cache hits in this
    process), [`cache_dir`][], [`cache_info`][], [`clear_cache`][].
"""

from ._acdc import auto_candidates as auto_candidates, forward_flops as forward_flops
from ._cache import (
    CompileStats as CompileStats,
    cache_dir as cache_dir,
    cache_info as cache_info,
    clear_cache as clear_cache,
    compile_stats as compile_stats,
)
from ._eap import _mask_grads
from ._evaluators import (
    TRACE_COUNTS as TRACE_COUNTS,
    Evaluator as Evaluator,
    band_start as band_start,
    clean_sources as clean_sources,
    evaluate_scan as evaluate_scan,
    evaluate_suffix as evaluate_suffix,
    evaluate_unrolled as evaluate_unrolled,
    stacked_blocks as stacked_blocks,
    suffix_prefix as suffix_prefix,
)
from ._floor import (
    edge_test_floor_flops as edge_test_floor_flops,
    edge_test_stages as edge_test_stages,
    executed_flops as executed_flops,
    floor_terms as floor_terms,
    run_floor as run_floor,
    stage_floor_flops as stage_floor_flops,
    xla_flops as xla_flops,
)
from ._memory import (
    MemoryBudgetError as MemoryBudgetError,
    MemoryEstimate as MemoryEstimate,
    acdc_memory as acdc_memory,
    check_fits as check_fits,
    device_memory as device_memory,
    eap_memory as eap_memory,
    sp_memory as sp_memory,
    xla_memory as xla_memory,
)
from ._sp import _sp_train


eap_gradient = _mask_grads
"""EAP's jitted step: `eap_gradient(model, task, corrupted, alphas, metric)`, the metric's
gradient with respect to every edge's mask at each interpolation point of `alphas` `(steps,)`
(`jnp.ones((1,))`: plain EAP). What `jacdc.eap_scores` and `jacdc.eap_ig_scores` call."""

sp_train = _sp_train
"""SP's jitted training loop: `sp_train(state, lambdas, lr, keys, model, task, corrupted,
metric, n_steps)` -> `(state, (loss, metric, reg))`, one lane per lambda (`state` from
`jacdc.init_sp_state(shape, n_lambdas)`, `keys` one PRNG key per lane). What `jacdc.sp_sweep`
calls."""
