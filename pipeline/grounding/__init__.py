"""Grounding: an open-vocabulary detector (Grounding DINO) finds the instruction's object, a
segmenter (SAM) cuts it out, and ``masks`` turns that into the mask variants the region edits use.

Both models sit behind small interfaces (``detector.Detector``, ``segmenter.Segmenter``) with two
backends each; ``build_detector`` / ``build_segmenter`` pick one from the job config. Importing this
package is cheap: torch and the model libraries load only when a backend is built.
"""
