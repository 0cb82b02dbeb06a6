"""OCR checks for the text task: the pixels say what the instruction says (EasyOCR, real weights).

  replace  OCR reads the new text in the output                        else ``new_text_not_read``
  remove   OCR finds no text in the masked region of the output        else ``text_remains``
  add      OCR reads the added text in the output and no text in the
           masked region of the input                                   else ``added_text_not_read``
                                                                        /    ``text_in_input``

The checks themselves are ``pipeline.text.checks`` (shared with the benchmark); OCR runs on a crop
around the mask. They emit no score column (the record's score columns are fixed): the verdict and
its detail are recorded with every candidate.
"""
from __future__ import annotations

from typing import ClassVar

from filters.base import Candidate, Filter, Verdict


class OcrChecks(Filter):
    name: ClassVar[str] = "ocr"
    tasks: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, text_cfg, ocr=None, gpu: bool = False):
        """``ocr``: an ``OcrReader`` to share (tests); None loads one from ``text_cfg``."""
        from pipeline.text.ocr import OcrReader

        self.cfg = text_cfg
        self.ocr = ocr or OcrReader(text_cfg.ocr_model_dir, text_cfg.ocr_languages, text_cfg.min_confidence, gpu=gpu)

    def model_refs(self) -> dict[str, str]:
        ref = getattr(self.ocr, "ref", None)
        return {"ocr": ref()} if ref else {}

    def __call__(self, c: Candidate) -> Verdict:
        from pipeline.text.checks import check_pair

        op = c.params.get("op")
        text = c.params.get("named_text") if op == "remove" else (c.params.get("new_text") or c.answer.get("new_text"))
        if op not in ("add", "remove", "replace") or not text or c.mask is None:
            return Verdict(False, "ocr_check_impossible", detail=f"op={op!r} text={text!r} mask={c.mask is not None}")
        reason, detail = check_pair(self.ocr, op, c.input_image, c.output_image, c.mask, text,
                                    match_threshold=self.cfg.match_threshold, min_confidence=self.cfg.min_confidence)
        return Verdict(reason is None, reason, detail=detail)
