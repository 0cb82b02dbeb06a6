"""The VLM judge: a served vision-language model rates each finished pair on a rubric (instruction
following, preservation, realism, technical quality) and may write the instruction again from the
pair itself. Config in ``config.py``, prompt / schema / scoring in ``rubric.py``, the stage in
``pipeline/stages/judge.py``."""
