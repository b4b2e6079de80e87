import os


# Runtime checks of the jaxtyping annotations (shapes and dtypes, with beartype for the rest) on
# every function and dataclass of `jacdc`, `jacdc.models` and `jacdc.tasks`, for the whole test
# session. The hook must be installed before anything imports jacdc, hence first in this file.
# Set JACDC_TYPECHECK=0 to run without it (e.g. to time the suite).
if os.environ.get("JACDC_TYPECHECK", "1") != "0":
    from jaxtyping import install_import_hook

    # PEP 484's numeric tower: an `int` is a valid `float` (beartype is stricter by default).
    install_import_hook(
        ["jacdc"], "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
    )

import jax.random as jr  # noqa: E402
import pytest  # noqa: E402
from helpers import unchecked  # noqa: E402


# Session-scoped fixtures live in one module per area, so that parallel work never edits this
# file: each area owns its `fixtures_*.py`.
pytest_plugins = ["fixtures_cache", "fixtures_tracr", "fixtures_lm"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "unchecked: run without jaxtyping's runtime checks: for tests of the errors users get "
        "(users run without the checks, whose TypeCheckError would come first)",
    )


@pytest.fixture(autouse=True)
def _typecheck_switch(request):
    if request.node.get_closest_marker("unchecked"):
        with unchecked():
            yield
    else:
        yield


# Every XLA:CPU executable maps about nine memory regions and JAX keeps every executable it
# compiled: a worker that runs hundreds of test files reaches the kernel's limit on memory maps
# (`vm.max_map_count`, 65,530) and segfaults inside XLA (seen in full runs: 61,000 maps at the
# crash). After any test that leaves the process above 20,000 maps, JAX's caches are dropped.
@pytest.fixture(autouse=True)
def _bounded_memory_maps():
    yield
    from jacdc._cache import release_compiled

    release_compiled()


@pytest.fixture
def getkey():
    keys = iter(jr.split(jr.key(0), 10_000))
    return lambda: next(keys)
