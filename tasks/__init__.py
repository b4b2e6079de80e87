"""Tasks: datasets, metrics (all minimised) and canonical circuits."""

# Task modules register themselves on import (keep this list in sync with the files).
from . import (  # noqa: E402  (language-model tasks: IOI, Greater-Than, Docstring, Induction)
    _docstring as _docstring,
    _greater_than as _greater_than,
    _induction as _induction,
    _ioi as _ioi,
    _tracr as _tracr,  # noqa: E402  (tracr tasks)
)
from ._arrays import (
    from_arrays as from_arrays,
    read_token_dataset as read_token_dataset,
    task_from_dataset as task_from_dataset,
)
from ._base import (
    AbstractMetric as AbstractMetric,
    KLMetric as KLMetric,
    L2Metric as L2Metric,
    Task as Task,
    TaskBundle as TaskBundle,
    clean_logits_at as clean_logits_at,
    kl_metric as kl_metric,
)
from ._canonical import (  # noqa: E402
    circuit_nodes as circuit_nodes,
    docstring_circuit as docstring_circuit,
    greater_than_circuit as greater_than_circuit,
    ioi_circuit as ioi_circuit,
)
from ._common import (  # noqa: E402
    DocstringMetric as DocstringMetric,
    LogitDiffMetric as LogitDiffMetric,
    NLLMetric as NLLMetric,
    ProbDiffMetric as ProbDiffMetric,
)
from ._docstring import (  # noqa: E402
    make_docstring_prompts as make_docstring_prompts,
    make_docstring_task as make_docstring_task,
)
from ._greater_than import (  # noqa: E402
    make_greater_than_prompts as make_greater_than_prompts,
    make_greater_than_task as make_greater_than_task,
)
from ._induction import (  # noqa: E402
    make_induction_task as make_induction_task,
    repeated_token_sequences as repeated_token_sequences,
)
from ._ioi import make_ioi_prompts as make_ioi_prompts, make_ioi_task as make_ioi_task  # noqa: E402
from ._registry import (
    TaskSpec as TaskSpec,
    available_tasks as available_tasks,
    get_task as get_task,
    load_task as load_task,
    register_task as register_task,
)
from ._text import (
    TEXT_METRICS as TEXT_METRICS,
    AnswerLogitDiff as AnswerLogitDiff,
    AnswerLogProb as AnswerLogProb,
    AnswerProbDiff as AnswerProbDiff,
    from_file as from_file,
    from_prompts as from_prompts,
    prompt_tokens as prompt_tokens,
)
from ._tracr import (  # noqa: E402
    make_tracr_hist as make_tracr_hist,
    make_tracr_pair_balance as make_tracr_pair_balance,
    make_tracr_proportion as make_tracr_proportion,
    make_tracr_reverse as make_tracr_reverse,
    make_tracr_sort_unique as make_tracr_sort_unique,
    proportion_canonical_circuit as proportion_canonical_circuit,
    reverse_canonical_circuit as reverse_canonical_circuit,
    tracr_model as tracr_model,
)
