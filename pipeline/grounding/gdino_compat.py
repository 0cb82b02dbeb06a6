"""Compatibility layer for ``groundingdino-py`` 0.4.0 (the original Grounding DINO code) on
transformers 5. ``load()`` applies it once and returns the package's modules.

What it fixes, and why:
  1. ``BertModelWarper`` re-implements BertModel.forward with methods transformers 5 removed
     (``get_head_mask``, ``past_key_values_length=`` of the embeddings, the encoder's ``head_mask``).
     Replaced by a wrapper with the same weights (same attribute names, so checkpoints load) that
     calls transformers 5's own embeddings and encoder and turns Grounding DINO's per-phrase
     [B, T, T] attention mask into the [B, 1, T, T] boolean mask they accept.
  2. ``groundingdino.util.visualizer`` imports matplotlib and pycocotools at import time, for a
     debugging plot the model never calls; when they are missing a stand-in module is installed.
  3. The package builds only its full-size Swin backbones. A config may carry ``tiny_swin``
     (embed_dim, depths, num_heads, window_size): the Swin is then built at those sizes. Only our
     tiny test models use it; real configs never have the key and build exactly as before.
The CUDA op (MultiScaleDeformableAttention) is missing in a pure-Python install; the package
falls back to its PyTorch implementation by itself.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
import types
import warnings

_TINY_SWIN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tiny_swin", default=None)
_applied = False


def _stub_visualizer() -> None:
    try:
        import matplotlib  # noqa: F401
        import pycocotools  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("groundingdino.util.visualizer")

    class COCOVisualizer:      # the model imports the name; only debugging code would call it
        def __init__(self, *a, **k):
            raise RuntimeError("COCOVisualizer needs matplotlib and pycocotools (not installed)")

    mod.COCOVisualizer = COCOVisualizer
    sys.modules["groundingdino.util.visualizer"] = mod


def _bert_warper_class():
    import torch
    from torch import nn
    from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

    class BertModelWarper(nn.Module):
        """Same submodules as the package's (embeddings, encoder, pooler), a transformers-5 forward."""

        def __init__(self, bert_model):
            super().__init__()
            self.config = bert_model.config
            self.embeddings = bert_model.embeddings
            self.encoder = bert_model.encoder
            self.pooler = bert_model.pooler

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **_):
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if attention_mask.dim() == 2:                       # [B, T] key padding → [B, 1, T, T]
                attention_mask = attention_mask[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)
            elif attention_mask.dim() == 3:                     # per-phrase blocks [B, T, T]
                attention_mask = attention_mask[:, None]
            emb = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)
            seq = self.encoder(emb, attention_mask=attention_mask.bool()).last_hidden_state
            pooled = self.pooler(seq) if self.pooler is not None else None
            return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=seq, pooler_output=pooled)

    return BertModelWarper


def _patch_swin() -> None:
    from groundingdino.models.GroundingDINO.backbone import backbone as bb
    from groundingdino.models.GroundingDINO.backbone.swin_transformer import SwinTransformer

    original = bb.build_swin_transformer

    def build_swin_transformer(modelname, pretrain_img_size, **kw):
        tiny = _TINY_SWIN.get()
        if tiny is None:
            return original(modelname, pretrain_img_size, **kw)
        return SwinTransformer(pretrain_img_size=pretrain_img_size, **{**tiny, **kw})

    bb.build_swin_transformer = build_swin_transformer


def load():
    """Apply the fixes (once) and return (build_model, SLConfig, clean_state_dict, NestedTensor)."""
    global _applied
    if not _applied:
        _stub_visualizer()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Failed to load custom C\\+\\+ ops.*")
            warnings.filterwarnings("ignore", category=FutureWarning, module="timm")   # its old import path
            import groundingdino.models.GroundingDINO.groundingdino as gd
        gd.BertModelWarper = _bert_warper_class()
        _patch_swin()
        _applied = True
    from groundingdino.models import build_model
    from groundingdino.util.misc import NestedTensor
    from groundingdino.util.slconfig import SLConfig
    from groundingdino.util.utils import clean_state_dict
    return build_model, SLConfig, clean_state_dict, NestedTensor


@contextlib.contextmanager
def quiet():
    """The package's forward warns about deprecated torch calls it makes on every call, and its
    build prints the text encoder path; neither is actionable for a user of a checkpoint."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.filterwarnings("ignore", message=".*(meshgrid|autocast).*")
        yield


@contextlib.contextmanager
def tiny_swin(sizes: dict | None):
    token = _TINY_SWIN.set(sizes)
    try:
        yield
    finally:
        _TINY_SWIN.reset(token)
