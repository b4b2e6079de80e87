"""Tasks: datasets, metrics (all minimised) and canonical circuits."""

from ._base import (
    AbstractMetric as AbstractMetric,
    clean_logits_at as clean_logits_at,
    KLMetric as KLMetric,
    kl_metric as kl_metric,
    L2Metric as L2Metric,
    Task as Task,
    TaskBundle as TaskBundle,
)
from ._registry import (
    available_tasks as available_tasks,
    get_task as get_task,
    load_task as load_task,
    register_task as register_task,
    TaskSpec as TaskSpec,
)


# Task modules register themselves on import (keep this list in sync with the files).
