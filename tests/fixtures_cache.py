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
os.environ.pop("JACDC_NO_CACHE", None)
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
