"""The "segment" vision task (Emu Edit): the output is the input photo with one object's pixels
painted over ("segment the dog").

Instruction agent only: ``plan`` is empty, the query is the caption, and the agent answers with an
instruction and ``edited_object``, the object to segment as a short detector phrase whose head noun
must occur in the caption — the same answer and check as detect, so it subclasses DetectTask. The pair generator (detector + SAM mask painted on the image, DESIGN.md
§3) lands later; until then ``make_pair`` keeps the base default ("no_generator").
"""
from __future__ import annotations

from tasks import register
from tasks.detect import DetectTask


@register
class SegmentTask(DetectTask):
    name = "segment"
    prompt_file = "segment.yaml"
