"""Running a task on the user's own data (`jacdc discover --dataset FILE`).

The reader is public as [`jacdc.tasks.read_token_dataset`][] and
[`jacdc.tasks.from_arrays`][] (file format in `tasks/_arrays.py`); this module keeps the name
the CLI has always used.
"""

from jacdc.tasks import task_from_dataset as task_from_dataset
