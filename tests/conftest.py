import os


# The suite compiles thousands of small XLA:CPU programs and runs each a few times, so LLVM's
# optimisation passes cost more than they save: with them at level 0 (and the expensive ones
# off) `tests/test_eap.py tests/test_sp.py` took 39 s instead of 48 s here. The programs (HLO)
# are the same; only the machine code is less optimised. Subprocesses started by tests inherit
# it. Set JACDC_TEST_XLA_OPT=1 to test with XLA's default code generation.
if os.environ.get("JACDC_TEST_XLA_OPT", "0") != "1":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    ).strip()


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
# crash). JAX's caches are dropped between test files when the worker holds more than 20,000
# maps. Inside a file they are kept (unless a file alone passes 50,000): tests there may count
# compilations across module fixtures, and with `--dist loadfile` a file runs whole on one
# worker, so whether a cache is dropped depends only on the file's own tests, never on what else
# the worker ran before it.
@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    from jacdc._cache import release_compiled

    same_file = nextitem is not None and nextitem.path == item.path
    release_compiled(max_maps=50_000 if same_file else 20_000)


@pytest.fixture
def getkey():
    keys = iter(jr.split(jr.key(0), 10_000))
    return lambda: next(keys)
