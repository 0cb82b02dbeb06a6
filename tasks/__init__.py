"""Task registry. The sixteen task names and their ids are fixed here once (the trainer's task
embedding is indexed by ``TASK_IDS``); a task module registers its implementation with ``@register``."""
from __future__ import annotations

import importlib

from tasks.base import Pair, SampleReject, Task

# Order fixed forever: ids are stored in shards and index the trainer's embedding table.
TASK_NAMES = (
    "local", "remove", "add", "texture", "background", "global", "style", "text",
    "detect", "segment", "color", "depth", "sketch", "normal", "pose", "segmentation",
)
TASK_IDS = {name: i for i, name in enumerate(TASK_NAMES)}

# Modules that implement a task; a new task adds its module here.
_MODULES = ("tasks.local", "tasks.remove", "tasks.add", "tasks.texture", "tasks.background", "tasks.color", "tasks.global_edit", "tasks.style", "tasks.text", "tasks.detect", "tasks.segment",
            "tasks.translation")
_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    if cls.name not in TASK_IDS:
        raise ValueError(f"unknown task name {cls.name!r}; known: {', '.join(TASK_NAMES)}")
    cls.task_id = TASK_IDS[cls.name]
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def with_agents() -> list[str]:
    """Tasks that have an instruction agent (a prompt file and plan/query), generator or not."""
    _load_all()
    return sorted(_REGISTRY, key=TASK_IDS.get)


def implemented() -> list[str]:
    """Tasks a generation job can run end to end (agent and pair generator)."""
    return [n for n in with_agents() if _REGISTRY[n].has_generator()]


def get_task(name: str) -> Task:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"task {name!r} has no agent; known: {', '.join(with_agents())}")
    return _REGISTRY[name]()


__all__ = ["Pair", "SampleReject", "Task", "TASK_NAMES", "TASK_IDS", "register", "get_task", "implemented", "with_agents"]
