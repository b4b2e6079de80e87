"""Shape vocabulary used in every jaxtyping annotation of jacdc.

| name | meaning | einsum letter |
| --- | --- | --- |
| `batch` | prompts in a task | `b` |
| `seq` | query / token position | `s` |
| `kv_seq` | key position (same length as `seq`) | `t` |
| `layer` | block index | `l` |
| `head` | attention head | `h` |
| `src` | upstream graph node (embeddings, heads, MLPs in topological order) | `n` |
| `d_model` | residual width | `d` |
| `d_head` | per-head q/k/v width | `e` |
| `d_mlp` | MLP hidden width | `m` |
| `d_vocab` | vocabulary (input side) | `v` |
| `d_vocab_out` | output vocabulary (differs from `d_vocab` for tracr) | `v` |
| `edge` | counted graph edges, in stable edge-id order | `i` |
| `cand` | candidate circuits evaluated together by the fast ACDC engine | `c` |
"""

from typing import TypeAlias

import numpy as np


NDBool: TypeAlias = np.ndarray
