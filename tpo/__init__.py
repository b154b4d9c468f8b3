"""tpo: task-preference heads for multimodal LLMs (TPO, arXiv 2412.19326)."""

from tpo.tasks import TaskSpec, register_task
from tpo.tokens import TaskTokens

__version__ = "0.1.0"

__all__ = ["Answer", "Predictor", "TPOModule", "TaskSpec", "TaskTokens", "register_task", "__version__"]


def __getattr__(name: str):
    if name == "TPOModule":  # imported on first use: it pulls in Lightning and every head
        from tpo.module import TPOModule

        return TPOModule
    if name in ("Answer", "Predictor"):
        from tpo import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'tpo' has no attribute {name!r}")
