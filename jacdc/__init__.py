"""jacdc: automated circuit discovery for transformers, in JAX."""

import importlib.metadata

from . import _source_tree as _source_tree  # first: maps jacdc.models/tasks in a checkout
from ._acdc import (
    ACDCResult as ACDCResult,
    acdc as acdc,
    acdc_nodes as acdc_nodes,
    acdc_sweep as acdc_sweep,
)
from ._cache import enable_compilation_cache as _enable_compilation_cache
from ._compare import compare_circuits as compare_circuits, overlap_stats as overlap_stats
from ._draw import draw as draw
from ._eap import (
    VanishingGradientError as VanishingGradientError,
    circuit_from_scores as circuit_from_scores,
    eap_ig_scores as eap_ig_scores,
    eap_scores as eap_scores,
)
from ._edge_pruning import (
    EdgePruningResult as EdgePruningResult,
    edge_pruning as edge_pruning,
    edge_pruning_sweep as edge_pruning_sweep,
)
from ._eval import evaluate_circuit as evaluate_circuit
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
from ._paper import paper_lambdas as paper_lambdas, paper_report as paper_report
from ._patching import (
    ABLATIONS as ABLATIONS,
    Ablation as Ablation,
    ablation_sources as ablation_sources,
    masked_logits as masked_logits,
    mean_sources as mean_sources,
    metric_of_mask as metric_of_mask,
    metric_value as metric_value,
    metrics_of_masks as metrics_of_masks,
)
from ._precision import (
    PRECISIONS as PRECISIONS,
    matmul_precision as matmul_precision,
    with_precision as _with_precision,
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


# Every public algorithm takes `precision=` (default "highest"; see jacdc/_precision.py).
acdc = _with_precision(acdc)
acdc_sweep = _with_precision(acdc_sweep)
acdc_nodes = _with_precision(acdc_nodes)
eap_scores = _with_precision(eap_scores)
eap_ig_scores = _with_precision(eap_ig_scores)
edge_pruning = _with_precision(edge_pruning)
edge_pruning_sweep = _with_precision(edge_pruning_sweep)
hisp = _with_precision(hisp)
hisp_scores = _with_precision(hisp_scores)
sp_sweep = _with_precision(sp_sweep)
subnetwork_probing = _with_precision(subnetwork_probing)

try:
    __version__ = importlib.metadata.version("jacdc")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"


# JAX's persistent compilation cache, on by default in the per-user cache folder
# (`JACDC_NO_CACHE=1` turns it off, `JACDC_CACHE_DIR` moves it; see `jacdc._cache`).
_enable_compilation_cache()
