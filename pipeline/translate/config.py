"""Job-file block ``translation:`` — the annotators of the five translation tasks."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    # the same base as pipeline.config._Strict (pipeline.config imports this module)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TranslationConfig(_Strict):
    """Filled in by the translation generators."""
