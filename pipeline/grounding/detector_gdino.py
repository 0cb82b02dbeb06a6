"""Detector backend: the original ``groundingdino-py`` package and its ``.pth`` checkpoints
(groundingdino_swint_ogc.pth, groundingdino_swinb_cogcoor.pth) — the ones users already have.

Loading is the package's own recipe: ``SLConfig.fromfile(config.py)``, ``build_model``, then the
checkpoint's ``"model"`` state dict. Two things differ from a bare install, both in ``gdino_compat``
(transformers 5) and here:
  * ``text_encoder_type`` is set to ``grounding.text_encoder_dir``, a local BERT folder, so the
    package never fetches bert-base-uncased from the hub (its weights are overwritten by the
    checkpoint anyway; the tokenizer is what matters);
  * the config comes from ``grounding.detector_config``, or else the package's own config matching
    the checkpoint's file name.
tiny-random writes its tiny config and a tiny BERT folder to the cache and builds from them, so it
runs the same build code; a tiny model saved as ``{"model": state_dict}`` loads by path like a real one.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path


from pipeline.grounding.detector import REAL_IMAGE_SIZE, TINY_IMAGE_SIZE, Detector, pick_device
from pipeline.grounding import gdino_compat
from pipeline.models.tiny import TINY, is_tiny

log = logging.getLogger("pairforge")

PACKAGE_CONFIGS = {"swint": "GroundingDINO_SwinT_OGC.py", "swinb": "GroundingDINO_SwinB_cfg.py"}
# state-dict entries a checkpoint may lack: buffers transformers recreates itself
_OPTIONAL_KEYS = ("position_ids", "token_type_ids")


def package_config(checkpoint: str) -> str:
    import groundingdino
    name = Path(checkpoint).name.lower()
    for key, cfg in PACKAGE_CONFIGS.items():
        if key in name:
            return str(Path(groundingdino.__file__).parent / "config" / cfg)
    raise ValueError(f"models.detector: cannot tell the Grounding DINO config from {Path(checkpoint).name!r}; "
                     f"set grounding.detector_config to the model's config .py")


def build_from_config(config_py: str, text_encoder_dir: str):
    """Build the architecture a config file describes (random weights)."""
    build_model, SLConfig, _, _ = gdino_compat.load()
    args = SLConfig.fromfile(config_py)
    args.device = "cpu"
    args.text_encoder_type = text_encoder_dir
    tiny = args._cfg_dict.to_dict().get("tiny_swin") if hasattr(args, "_cfg_dict") else None
    with gdino_compat.tiny_swin(tiny), gdino_compat.quiet():
        model = build_model(args)
    return model.eval()


# What a groundingdino-py .pth may hold besides tensors, dicts, lists and numbers: the DINO-family
# training scripts save their argparse arguments beside the weights ({"model": ..., "args":
# Namespace(...)}). Rebuilt as plain attribute bags, never called; nothing else is allowed.
SAFE_GLOBALS = (argparse.Namespace,)


def read_checkpoint(checkpoint: str) -> dict:
    """The checkpoint's tensors without running its pickle: a .safetensors file, or a .pth read
    with ``torch.load(weights_only=True)`` and the small allowlist above. Anything else in the
    pickle (a class or function it would call) is refused with the way to convert it."""
    import pickle

    import torch
    if checkpoint.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(checkpoint, device="cpu")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"it would call {m.group(1)}" if m else next(
            (ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler" in ln), "not a weights-only pickle")
        stem = str(Path(checkpoint).with_suffix(""))
        raise ValueError(
            f"models.detector: {checkpoint} pickles more than tensors ({why}); it is not loaded, since "
            "unpickling it could run code. If you trust the file, convert it once to safetensors and "
            f"set models.detector to that file:\n  python -c \"import torch; from safetensors.torch import "
            f"save_file; c = torch.load('{checkpoint}', map_location='cpu', weights_only=False); "
            f"save_file({{k: v.contiguous().clone() for k, v in c.get('model', c).items()}}, "
            f"'{stem}.safetensors')\"") from None


def load_checkpoint(checkpoint: str, config_py: str, text_encoder_dir: str):
    _, _, clean_state_dict, _ = gdino_compat.load()
    ckpt = read_checkpoint(checkpoint)      # first: a file that cannot be read safely builds nothing
    model = build_from_config(config_py, text_encoder_dir)
    state = clean_state_dict(ckpt["model"] if "model" in ckpt else ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(_OPTIONAL_KEYS)]
    if missing or unexpected:
        raise ValueError(f"models.detector: {checkpoint} does not match {Path(config_py).name}: "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]})")
    return model.eval()


def tiny_files() -> tuple[str, str]:
    """(config .py, BERT folder) of the tiny model, written to the cache once."""
    from pipeline.grounding.tiny_models import cache_dir, tiny_bert_dir, tiny_gdino_py_config, write_config_py
    bert = tiny_bert_dir()
    cfg = cache_dir() / "groundingdino_tiny_cfg.py"
    write_config_py(tiny_gdino_py_config(bert), cfg)
    return str(cfg), bert


def build_tiny():
    from pipeline.grounding.tiny_models import SEED_GDINO_PY
    from pipeline.models.tiny import seeded
    cfg, bert = tiny_files()
    with seeded(SEED_GDINO_PY):
        return build_from_config(cfg, bert)


class GroundingDinoPyDetector(Detector):
    def __init__(self, spec: str, g):
        import torch

        self.g = g
        self.device = pick_device(g.device)
        _, _, _, self.NestedTensor = gdino_compat.load()
        if is_tiny(spec):
            self.model, self.model_id, default_size = build_tiny(), f"{TINY}:groundingdino-py", TINY_IMAGE_SIZE
        else:
            if not g.text_encoder_dir:
                raise ValueError("grounding.text_encoder_dir: groundingdino-py needs a local BERT folder "
                                 "(bert-base-uncased saved with save_pretrained); without it the package "
                                 "downloads one from the hub")
            if not Path(g.text_encoder_dir).is_dir():
                raise FileNotFoundError(f"grounding.text_encoder_dir: {g.text_encoder_dir!r} is not a folder")
            if g.detector_config and not Path(g.detector_config).exists():
                raise FileNotFoundError(f"grounding.detector_config: {g.detector_config!r} does not exist")
            config_py = g.detector_config or package_config(spec)
            self.model = load_checkpoint(spec, config_py, g.text_encoder_dir)
            self.model_id, default_size = f"{spec} ({Path(config_py).name})", REAL_IMAGE_SIZE
        self.model.to(self.device).eval()
        self.tokenizer = self.model.tokenizer
        self.size = g.detector_image_size or default_size
        self.max_len = int(self.model.max_text_len)
        self._torch = torch

    def _forward(self, px, valid, caps):
        torch = self._torch
        samples = self.NestedTensor(px.to(self.device), (~valid).to(self.device))   # mask: True = padding
        with torch.inference_mode(), gdino_compat.quiet():
            res = self.model(samples, captions=caps)
        prob = res["pred_logits"].sigmoid().float().cpu().numpy()
        return prob, res["pred_boxes"].float().cpu().numpy()
