"""The test session's cache folder: never the user's.

Imported by `conftest.py` before any test module imports jacdc, so `JACDC_CACHE_DIR` points at a
fresh temporary folder for the whole session (compiled tracr models and JAX's compilation cache
land there and are removed at exit). Subprocesses started by tests inherit it.
"""

import atexit
import os
import shutil
import tempfile


_SESSION_CACHE = tempfile.mkdtemp(prefix="jacdc-test-cache-")
os.environ["JACDC_CACHE_DIR"] = _SESSION_CACHE
# In this process JAX's persistent compilation cache stays off: serialising every one of the
# suite's thousands of executables costs time. The cache itself is tested in fresh
# subprocesses (`tests/test_cache.py`), which clear this variable; compiled tracr models are
# cached in the session folder by the tests that ask for it.
os.environ["JACDC_NO_CACHE"] = "1"
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
