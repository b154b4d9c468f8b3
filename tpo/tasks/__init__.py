"""Tasks: one module per task (``temporal``, ``box``, ``track``, ``mask``) and one registry.

Each task module defines a :class:`Task` subclass holding everything about its task (tokens,
head, targets, metric, prompts, answers) and registers an instance. Code elsewhere asks the
registry (``get_task(name).score(...)``) instead of comparing task names. A fifth task is a
``Task`` subclass registered from the user's own code.
"""

from tpo.tasks.base import Task
from tpo.tasks.registry import (
    BUILTIN_TASKS,
    TaskSpec,
    get_task,
    get_task_spec,
    list_tasks,
    register_task,
    unregister_task,
)

__all__ = [
    "BUILTIN_TASKS",
    "Task",
    "TaskSpec",
    "get_task",
    "get_task_spec",
    "list_tasks",
    "register_task",
    "unregister_task",
]
