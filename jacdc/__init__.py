"""jacdc: automated circuit discovery for transformers, in JAX."""

import importlib.metadata
import importlib.util
import sys
from pathlib import Path


def _map_source_tree() -> None:
    # `models/` and `tasks/` live at the top of the repository and install as `jacdc.models` and
    # `jacdc.tasks`. Imported from a checkout without `pip install` (e.g. `python -c "import
    # jacdc"` in the repository root) they are not found; a finder at the end of
    # `sys.meta_path` maps them to those folders (an installed copy always wins).
    root = Path(__file__).resolve().parent.parent
    folders = {f"{__name__}.{n}": root / n for n in ("models", "tasks")}
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


_map_source_tree()

from ._acdc import (
    ACDCResult as ACDCResult,
    acdc as acdc,
    acdc_nodes as acdc_nodes,
    acdc_sweep as acdc_sweep,
)
from ._eap import (
    circuit_from_scores as circuit_from_scores,
    eap_ig_scores as eap_ig_scores,
    eap_scores as eap_scores,
)
from ._edge_pruning import (
    EdgePruningResult as EdgePruningResult,
    edge_pruning as edge_pruning,
    edge_pruning_sweep as edge_pruning_sweep,
)
from ._faithfulness import (
    Faithfulness as Faithfulness,
    cpr_cmd as cpr_cmd,
    faithfulness_curve as faithfulness_curve,
)
from ._graph import (
    Edge as Edge,
    EdgeMask as EdgeMask,
    Graph as Graph,
    GraphShape as GraphShape,
    graph_of as graph_of,
    set_edge as set_edge,
)
from ._hisp import HISPResult as HISPResult, hisp as hisp, hisp_scores as hisp_scores
from ._patching import (
    ABLATIONS as ABLATIONS,
    Ablation as Ablation,
    ablation_sources as ablation_sources,
    masked_logits as masked_logits,
    mean_sources as mean_sources,
    metric_of_mask as metric_of_mask,
    metric_value as metric_value,
)
from ._roc import (
    ROCResult as ROCResult,
    node_names as node_names,
    pessimistic_auc as pessimistic_auc,
    present_nodes as present_nodes,
    roc as roc,
    roc_curve as roc_curve,
    top_k_circuits as top_k_circuits,
    trapezoid_auc as trapezoid_auc,
)
from ._roc_report import roc_report as roc_report
from ._sp import (
    NodeMask as NodeMask,
    SPResult as SPResult,
    SPState as SPState,
    circuit_from_units as circuit_from_units,
    init_sp_state as init_sp_state,
    node_edge_mask as node_edge_mask,
    sp_lambdas as sp_lambdas,
    sp_step as sp_step,
    sp_sweep as sp_sweep,
    subnetwork_probing as subnetwork_probing,
    unit_ablation_sources as unit_ablation_sources,
    unit_names as unit_names,
)


try:
    __version__ = importlib.metadata.version("jacdc")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
