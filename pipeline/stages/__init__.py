"""Pipeline stages. Each is a Ray actor class: ``__init__`` loads models once (``setup``),
``__call__(batch) -> batch`` processes one Arrow batch of flow rows."""
from pipeline.stages.base import Stage
from pipeline.stages.diffusion import DiffusionBaseStage, DiffusionEditStage
from pipeline.stages.filter import FilterStage
from pipeline.stages.ground import GroundStage
from pipeline.stages.instruct import InstructStage
from pipeline.stages.judge import JudgeStage
from pipeline.stages.load import LoadStage
from pipeline.stages.pair import CpuPairStage
from pipeline.stages.text import TextStage
from pipeline.stages.translate import TranslateStage

# Order of the chain; the runner builds one actor pool per entry.
CHAIN = (LoadStage, InstructStage, DiffusionBaseStage, GroundStage, TextStage, TranslateStage, DiffusionEditStage,
         CpuPairStage, FilterStage, JudgeStage)

__all__ = ["Stage", "LoadStage", "InstructStage", "DiffusionBaseStage", "GroundStage", "DiffusionEditStage", "CpuPairStage", "TextStage", "TranslateStage", "FilterStage", "JudgeStage", "CHAIN"]
