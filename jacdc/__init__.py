"""jacdc: automated circuit discovery for transformers, in JAX."""

import importlib.metadata

from ._graph import (
    Edge as Edge,
    EdgeMask as EdgeMask,
    Graph as Graph,
    graph_of as graph_of,
    GraphShape as GraphShape,
    set_edge as set_edge,
)


try:
    __version__ = importlib.metadata.version("jacdc")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
