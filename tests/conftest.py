import jax.random as jr
import pytest


# Session-scoped fixtures live in one module per area, so that parallel work never edits this
# file: each area owns its `fixtures_*.py`.
pytest_plugins = ["fixtures_cache", "fixtures_tracr", "fixtures_lm"]


@pytest.fixture
def getkey():
    keys = iter(jr.split(jr.key(0), 10_000))
    return lambda: next(keys)
