"""``pairforge export-editor``: a trained checkpoint as a folder to share — what the Hub and
``DiffusionPipeline.from_pretrained`` expect, nothing pairforge-only needed to load it.

DEST gets the pipeline's ``save_pretrained`` (components as safetensors, ``model_index.json``
naming ``pipeline_emu_edit.py``, which is copied beside it and into ``task_embedding/``), the
checkpoint's ``trainer.json`` and ``eval_results.json`` (the card's sources) and the model card
``README.md``. Training state (optimizer, raw weights) stays behind. Nothing is uploaded: push DEST
with ``huggingface-cli upload`` or ``HfApi().upload_folder`` when you choose to.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from trainer.model_card import EVAL_FILE, write_model_card

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_editor(checkpoint: str | Path, dest: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    from trainer.edit import load_pipeline

    src, dest = Path(checkpoint), Path(dest)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: one of {', '.join(DTYPES)}, got {dtype!r}")
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{dest} holds files; choose an empty folder or pass --overwrite")
        if dest.resolve() == src.resolve():
            raise ValueError("DEST is the checkpoint itself")
        shutil.rmtree(dest)
    pipe = load_pipeline(src)                    # this code's classes, so DEST gets this code's pipeline file
    pipe.to(DTYPES[dtype])
    pipe.save_pretrained(dest)
    for name in ("trainer.json", EVAL_FILE):
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    write_model_card(dest)
    return dest
