"""The one task registry: ``register_task``, ``get_task``, ``list_tasks`` (after timm's
``register_model`` / ``create_model`` / ``list_models``).

A task is a :class:`~tpo.tasks.base.Task` object; a bare :class:`TaskSpec` (special tokens only,
e.g. a task the router sends to an external expert) registers as a token-only task. The built-in
tasks (``temporal``, ``box``, ``track``, ``mask``) are registered on first use, in that order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tpo.tasks.base import Task

__all__ = [
    "BUILTIN_TASKS", "TaskSpec", "get_task", "get_task_spec", "list_tasks", "register_task", "unregister_task"
]

BUILTIN_TASKS = ("temporal", "box", "track", "mask")
"""Modules of :mod:`tpo.tasks` holding the built-in tasks, registered in this order."""


@dataclass(frozen=True)
class TaskSpec:
    """The special tokens of one task.

    Attributes:
        name: registry key, e.g. ``"temporal"``.
        begin_token: token the LM emits to announce the task, e.g. ``"<time_begin>"``.
        placeholder_token: token whose input embedding is the learnable task embedding and whose
            last hidden state feeds the head, e.g. ``"<temp>"``.
        input_token: optional token whose embedding encodes a box given in the prompt
            (``"<track_box>"``), or ``None``.
    """

    name: str
    begin_token: str
    placeholder_token: str
    input_token: str | None = None

    @property
    def tokens(self) -> tuple[str, ...]:
        """All special tokens of the task, begin token first."""
        extra = (self.input_token,) if self.input_token else ()
        return (self.begin_token, self.placeholder_token, *extra)


_REGISTRY: dict[str, Task] = {}
_LOADING = False


def _load_builtins() -> None:
    global _LOADING
    if _LOADING or all(name in _REGISTRY for name in BUILTIN_TASKS):
        return
    _LOADING = True
    try:
        for name in BUILTIN_TASKS:
            importlib.import_module(f"tpo.tasks.{name}")
    finally:
        _LOADING = False


def register_task(task: Task | TaskSpec, *, overwrite: bool = False) -> Task:
    """Add a task (or a token-only :class:`TaskSpec`) to the registry; its tokens must not clash
    with a registered task's. Registering an equal task again is a no-op.

    Returns:
        the registered task object.
    """
    from tpo.tasks.base import Task

    _load_builtins()
    if isinstance(task, TaskSpec):
        task = Task(task)
    if not isinstance(task, Task):
        raise ValueError(f"register_task: expected a Task or a TaskSpec, got {type(task).__name__}")
    name = task.name
    if name in _REGISTRY and not overwrite:
        known = _REGISTRY[name]
        if known.spec == task.spec and type(known) is type(task):
            return known
        raise ValueError(f"task {name!r} is already registered as {known.spec}")
    taken = {
        tok: other.name for other in _REGISTRY.values() if other.name != name for tok in other.spec.tokens
    }
    clashes = [tok for tok in task.spec.tokens if tok in taken]
    if clashes:
        raise ValueError(f"task {name!r}: tokens {clashes} are already used by task {taken[clashes[0]]!r}")
    _REGISTRY[name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a registered task (e.g. one a notebook cell or a test registered); built-in tasks
    cannot be removed."""
    if name in BUILTIN_TASKS:
        raise ValueError(f"task {name!r}: built-in tasks cannot be unregistered")
    get_task(name)
    del _REGISTRY[name]


def get_task(name: str) -> Task:
    """The registered task ``name``; a ``ValueError`` lists the registered names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"task {name!r} is not registered; registered tasks: {list_tasks()} "
            "(add one with tpo.tasks.register_task)"
        ) from None


def get_task_spec(name: str) -> TaskSpec:
    """The special tokens of the registered task ``name``."""
    return get_task(name).spec


def list_tasks(*, with_head: bool = False) -> list[str]:
    """Names of the registered tasks in registration order (``with_head``: only those with a
    head class, i.e. not token-only tasks)."""
    _load_builtins()
    return [name for name, task in _REGISTRY.items() if not with_head or task.head_class is not None]
