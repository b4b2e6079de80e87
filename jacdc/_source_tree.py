"""`import jacdc` from a source checkout that was never installed.

`models/` and `tasks/` live at the top of the repository and install as `jacdc.models` and
`jacdc.tasks` (setuptools maps them). Imported from a checkout without `pip install` (e.g.
`python -c "import jacdc"` in the repository root) they are not found; [`map_source_tree`][]
appends a finder to `sys.meta_path` that maps them to those folders (an installed copy always
wins, being found first).
"""

import importlib.util
import sys
from pathlib import Path


def map_source_tree() -> None:
    """Makes `jacdc.models` and `jacdc.tasks` importable from the checkout's folders when
    they are not installed; an `ImportError` saying to `pip install -e .` when the folders are
    missing too."""
    root = Path(__file__).resolve().parent.parent
    folders = {f"jacdc.{n}": root / n for n in ("models", "tasks")}
    if all(importlib.util.find_spec(full) is not None for full in folders):
        return
    missing = [f for f in folders.values() if not (f / "__init__.py").is_file()]
    if missing:
        raise ImportError(
            f"jacdc.models / jacdc.tasks are not installed and {missing[0]} is missing; install "
            'jacdc with `pip install -e .` (or `pip install -c constraints.txt ".[test]"`).'
        )

    class _SourceTreeFinder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None:
                return None
            return importlib.util.spec_from_file_location(
                fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )

    sys.meta_path.append(_SourceTreeFinder())


map_source_tree()
