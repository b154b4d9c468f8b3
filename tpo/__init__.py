"""tpo: task-preference heads for multimodal LLMs (TPO, arXiv 2412.19326)."""

from tpo.tokens import TaskSpec, TaskTokens, register_task

__version__ = "0.1.0"

__all__ = ["TaskSpec", "TaskTokens", "register_task", "__version__"]
