"""Job-file block ``text:`` — OCR, inpainting and text rendering of the text task."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    # the same base as pipeline.config._Strict (pipeline.config imports this module)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TextConfig(_Strict):
    """Filled in by the text-editing generator."""
