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
