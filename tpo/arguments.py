"""Keyword arguments a callable does not take, for start-up errors that list the valid ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["unknown_arguments"]


def unknown_arguments(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(unknown, valid)``: the sorted keys of ``kwargs`` that ``fn`` has no parameter for (none
    when it takes ``**kwargs``) and ``fn``'s parameter names (without ``*args``)."""
    params = inspect.signature(fn).parameters
    valid = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [], valid
    return sorted(set(kwargs) - set(params)), valid
