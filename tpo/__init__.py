"""tpo: task-preference heads for multimodal LLMs."""
__version__ = "0.1.0"
