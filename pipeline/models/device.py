"""Where a stage's models run. ``auto`` means the GPU when this process sees one: a Ray actor sees
exactly the GPUs its stage's ``num_gpus`` grants (Ray sets CUDA_VISIBLE_DEVICES), so a stage given
no GPU runs on the CPU even on a GPU node, and one given a GPU uses it without further settings."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

DEVICE_HELP = "Torch device: auto (cuda when the stage's actor was granted a GPU, else cpu), cpu, cuda, cuda:N."


def check_device(v: str) -> str:
    """Config-time check, so a typo fails naming its field instead of inside an actor's setup."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda or cuda:N")
    return v


Device = Annotated[str, AfterValidator(check_device)]


def resolve_device(name: str = "auto") -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_cpu(output):
    """A transformers ModelOutput (or a tensor) moved to the CPU, so the processors' post-processing,
    which makes its own CPU tensors, never mixes devices."""
    if hasattr(output, "items"):
        return type(output)(**{k: (v.cpu() if hasattr(v, "cpu") else v) for k, v in output.items()})
    return output.cpu() if hasattr(output, "cpu") else output
