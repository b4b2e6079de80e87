"""jacdc: automated circuit discovery for transformers, in JAX."""

import importlib.metadata

from ._acdc import (
    acdc as acdc,
    acdc_nodes as acdc_nodes,
    acdc_sweep as acdc_sweep,
    ACDCResult as ACDCResult,
)
from ._graph import (
    Edge as Edge,
    EdgeMask as EdgeMask,
    Graph as Graph,
    graph_of as graph_of,
    GraphShape as GraphShape,
    set_edge as set_edge,
)
from ._patching import (
    ablation_sources as ablation_sources,
    masked_logits as masked_logits,
    metric_of_mask as metric_of_mask,
    metric_value as metric_value,
)


try:
    __version__ = importlib.metadata.version("jacdc")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
