"""The task registry: names the CLI understands, each with a builder.

A task module registers its builders with [`register_task`][] at import time; `jacdc.tasks`
imports every task module, so `available_tasks()` lists them all. Only the CLI and user code look
tasks up by name; algorithms take a [`TaskBundle`][] and never know which task it is.
"""

import dataclasses
from collections.abc import Callable

from ._base import TaskBundle


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task.

    - `name`: e.g. `"tracr-reverse"`, `"ioi"`.
    - `description`: one line for `jacdc tasks`.
    - `build`: `build(**options) -> TaskBundle`. Every builder accepts `weights: str | None`
        (a checkpoint folder/file or hub id; ignored by tasks that need none) and `seed: int`;
        other keyword options are task-specific.
    - `metrics`: metric names the task offers; `default_metric` is one of them.
    - `needs_weights`: True if the model must be downloaded or given with `--weights`.
    """

    name: str
    description: str
    build: Callable[..., TaskBundle]
    metrics: tuple[str, ...]
    default_metric: str
    needs_weights: bool = False


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"Task {spec.name!r} is registered twice.")
    if spec.default_metric not in spec.metrics:
        raise ValueError(f"Task {spec.name!r}: default metric not in {spec.metrics}.")
    _REGISTRY[spec.name] = spec
    return spec


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> TaskSpec:
    """The [`TaskSpec`][] registered as `name`; a `ValueError` listing the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown task {name!r}. Available tasks: {', '.join(available_tasks()) or 'none'}. "
            "`jacdc tasks` lists them with descriptions."
        ) from None


def load_task(name: str, **options) -> TaskBundle:
    """Builds the task registered as `name` (see [`TaskSpec`][] for the options)."""
    return get_task(name).build(**options)
