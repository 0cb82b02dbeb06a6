"""Text editing with real OCR (EasyOCR): find the text, mask it, inpaint it, redraw new text."""
