"""Session fixtures for the tracr tests (compile each program once per session).

tracr compiles take seconds each; `jacdc.tasks._tracr.tracr_assembled` caches them per process,
and the bundles below are built once per session, so every tracr test shares one compile per
program.
"""

import jax
import pytest


TRACR_TASKS = (
    "tracr-reverse",
    "tracr-proportion",
    "tracr-sort-unique",
    "tracr-hist",
    "tracr-pair-balance",
)


@pytest.fixture(scope="session")
def tracr_compiled():
    """Compiles every tracr task's program once. Most of a tracr compile is Haiku initialising
    the model *eagerly* (dozens of one-op XLA compilations, whose output tracr then overwrites),
    so XLA's optimisations are switched off for it: about a third faster. The flag only affects
    the compilations made inside this block; it is restored afterwards."""
    from jacdc.tasks._tracr import tracr_assembled

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        for name in TRACR_TASKS:
            tracr_assembled(name)
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    return TRACR_TASKS


# The parametrised task tests check well-formed tracr inputs (BOS first), so proportion enters
# them as its BOS variant; the paper-faithful `tracr-proportion` (ids 0-3, BOS and pad anywhere)
# has its own test.
BUNDLE_TASKS = tuple(n + "-bos" if n == "tracr-proportion" else n for n in TRACR_TASKS)


@pytest.fixture(scope="session", params=BUNDLE_TASKS)
def tracr_bundle(request, tracr_compiled):
    """Each registered tracr task, built once per session (default seed)."""
    from jacdc.tasks import load_task

    return load_task(request.param)


@pytest.fixture(scope="session")
def tracr_reverse(tracr_compiled):
    from jacdc.tasks import load_task

    return load_task("tracr-reverse")


@pytest.fixture(scope="session")
def tracr_proportion(tracr_compiled):
    from jacdc.tasks import load_task

    return load_task("tracr-proportion")
