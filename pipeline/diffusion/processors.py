"""Attention control for P2P and PnP as diffusers attention processors and forward hooks.

One UNet batch holds the source branch and every candidate (``BatchLayout``):

    [ uncond block: (source_u) cand_1 … cand_k | cond block: source_c cand_1 … cand_k ]

``AttentionControl`` says, at the current step, which candidate rows take what from which source
row; ``ControlledAttnProcessor`` (installed on every attention module through
``unet.set_attn_processor``, so any UNet configuration works) applies it:

* self-attention sharing: the candidate's queries and keys are replaced by the source's, so its
  attention map *is* the source's while its values stay its own — P2P's map replacement, computed
  with fused SDPA instead of materialising N×N maps (PnP injects q and k the same way);
* cross-attention injection: the candidate's map over the text tokens takes the source's column of
  the aligned token wherever the two captions share a token (P2P "refine"), its own elsewhere;
* spatial features (PnP): forward hooks on chosen ResNet blocks copy the source's output.

Nothing here patches ``forward`` or depends on block indices; the layers PnP uses are module-name
patterns from the config, checked against the UNet when installed.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchLayout:
    """Row indices of the UNet batch for a source branch and ``n_cand`` candidates under CFG.

    ``source_cfg``: the source branch runs with its own unconditional row (a free-running source,
    e.g. regenerating a base image); without it the source is one conditional row whose latent is
    dictated by a trajectory (inversion or a recorded generation)."""
    n_cand: int
    source_cfg: bool = True

    @property
    def n_uncond(self) -> int:
        return self.n_cand + int(self.source_cfg)

    @property
    def size(self) -> int:
        return self.n_uncond + 1 + self.n_cand

    @property
    def src_c(self) -> int:
        return self.n_uncond

    @property
    def src_u(self) -> int:
        """Where unconditional candidate rows take the source from (its own cond row if it has no uncond)."""
        return 0 if self.source_cfg else self.src_c

    def cand_u(self, j: int) -> int:
        return j + int(self.source_cfg)

    def cand_c(self, j: int) -> int:
        return self.n_uncond + 1 + j


@dataclass
class _Pairs:
    dst: torch.Tensor      # candidate rows that receive
    src: torch.Tensor      # source row for each
    cand: torch.Tensor     # candidate index of each (for per-candidate token maps)


class AttentionControl:
    """Per-candidate schedules of what is shared with the source branch, and the current step.

    ``*_steps[j]``: candidate j receives that kind of injection while ``step < *_steps[j]``.
    ``inject_uncond``: also inject into the unconditional rows (PnP does; P2P edits only the
    conditional half, as the original code does). ``token_map``/``token_alpha`` (k × L): for each
    token position of candidate j's caption, the aligned source position and 1 where aligned.
    ``inject=False`` switches every injection off (the schedules are kept, the processors run plain
    attention): the baseline the tests compare against. ``log`` counts the injections applied per
    (kind, layer, step); ``calls`` sums it per kind."""

    def __init__(self, layout: BatchLayout, *, self_steps: list[int], cross_steps: list[int] | None = None,
                 feature_steps: list[int] | None = None, token_map: torch.Tensor | None = None,
                 token_alpha: torch.Tensor | None = None, inject_uncond: bool = False,
                 self_layer: Callable[[str, int], bool] = lambda name, n_tokens: True, inject: bool = True):
        k = layout.n_cand
        for what, v in (("self_steps", self_steps), ("cross_steps", cross_steps), ("feature_steps", feature_steps)):
            if v is not None and len(v) != k:
                raise ValueError(f"{what} has {len(v)} entries for {k} candidates")
        if cross_steps is not None and any(cross_steps) and (token_map is None or token_alpha is None):
            raise ValueError("cross-attention injection needs token_map and token_alpha")
        self.layout, self.inject_uncond, self.self_layer, self.inject = layout, inject_uncond, self_layer, inject
        self.steps = {"self": list(self_steps), "cross": list(cross_steps or [0] * k),
                      "feature": list(feature_steps or [0] * k)}
        self.token_map, self.token_alpha = token_map, token_alpha
        self.step = -1
        self._pairs: dict[str, _Pairs | None] = {}
        self.log: Counter[tuple[str, str, int]] = Counter()   # (kind, layer, step) → injections applied

    @property
    def calls(self) -> dict[str, int]:
        out = {"self": 0, "cross": 0, "feature": 0}
        for (kind, _, _), n in self.log.items():
            out[kind] += n
        return out

    def record(self, kind: str, layer: str) -> None:
        self.log[(kind, layer, self.step)] += 1

    def set_step(self, step: int, device: torch.device | str = "cpu") -> None:
        self.step = step
        if self.token_map is not None:      # built on the CPU by the tokenizer; indexed on the UNet's device
            self.token_map, self.token_alpha = self.token_map.to(device), self.token_alpha.to(device)
        lay = self.layout
        for kind, until in self.steps.items():
            dst, src, cand = [], [], []
            for j, n in enumerate(until):
                if self.inject and step < n:
                    dst.append(lay.cand_c(j)); src.append(lay.src_c); cand.append(j)
                    if self.inject_uncond:
                        dst.append(lay.cand_u(j)); src.append(lay.src_u); cand.append(j)
            self._pairs[kind] = None if not dst else _Pairs(*(torch.tensor(x, device=device) for x in (dst, src, cand)))

    def pairs(self, kind: str) -> _Pairs | None:
        return self._pairs.get(kind)


class ControlledAttnProcessor:
    """Scaled-dot-product attention (as ``AttnProcessor2_0``) with the source → candidate injections
    of an ``AttentionControl``. Outside injection it is the plain fused path."""

    def __init__(self, control: AttentionControl, name: str):
        self.control, self.name = control, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, n_tokens, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        key_len = encoder_hidden_states.shape[1] if is_cross else n_tokens
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        context = hidden_states if not is_cross else (
            attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        ctl = self.control
        if not is_cross:
            p = ctl.pairs("self") if ctl.self_layer(self.name, n_tokens) else None
            if p is not None:
                # the candidate attends with the source's map: softmax(q_s k_sᵀ) v_cand
                query, key = query.clone(), key.clone()
                query[p.dst], key[p.dst] = query[p.src], key[p.src]
                ctl.record("self", self.name)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        else:
            p = ctl.pairs("cross")
            if p is None:
                out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            else:
                out = self._injected_cross(attn, query, key, value, attention_mask, p)
                ctl.record("cross", self.name)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _injected_cross(self, attn, query, key, value, attention_mask, p: _Pairs):
        # token maps are tiny (N × L, L = 77): materialise them, in float32 for the softmax
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probs = scores.softmax(dim=-1)
        tmap, alpha = self.control.token_map, self.control.token_alpha
        if tmap.shape[-1] != probs.shape[-1]:
            raise ValueError(f"{self.name}: token map has {tmap.shape[-1]} positions, the text has {probs.shape[-1]}")
        src = probs[p.src]                                                    # (n, heads, N, L)
        idx = tmap[p.cand][:, None, None, :].expand(-1, src.shape[1], src.shape[2], -1)
        a = alpha[p.cand].to(probs.dtype)[:, None, None, :]
        probs[p.dst] = torch.gather(src, -1, idx) * a + probs[p.dst] * (1 - a)
        return torch.matmul(probs.to(value.dtype), value)


def _feature_hook(control: AttentionControl, name: str):
    def hook(module, inputs, output):
        p = control.pairs("feature")
        if p is None:
            return output
        output = output.clone()
        output[p.dst] = output[p.src]
        control.record("feature", name)
        return output
    return hook


def matching_modules(unet, patterns: list[str], kind: type, field: str) -> list[tuple[str, torch.nn.Module]]:
    found = [(n, m) for n, m in unet.named_modules()
             if isinstance(m, kind) and any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not found:
        have = [n for n, m in unet.named_modules() if isinstance(m, kind)]
        raise ValueError(f"{field}: {patterns} match no {kind.__name__} of this UNet; it has {have[:12]}"
                         f"{' …' if len(have) > 12 else ''}")
    return found


@contextlib.contextmanager
def controlled(unet, control: AttentionControl, *, feature_layers: list[str] | None = None) -> Iterator[None]:
    """Install a ``ControlledAttnProcessor`` on every attention module of ``unet`` (and feature hooks
    on the ResNet blocks named by ``feature_layers``); restore the previous processors on exit."""
    from diffusers.models.resnet import ResnetBlock2D

    before = unet.attn_processors
    handles = []
    try:
        unet.set_attn_processor({name: ControlledAttnProcessor(control, name.removesuffix(".processor"))
                                 for name in before})
        if feature_layers:
            for name, mod in matching_modules(unet, feature_layers, ResnetBlock2D, "diffusion.pnp_feature_layers"):
                handles.append(mod.register_forward_hook(_feature_hook(control, name)))
        yield
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(before)


def name_filter(patterns: list[str]) -> Callable[[str, int], bool]:
    """Self-attention layer filter by processor-name patterns (PnP: the decoder)."""
    return lambda name, n_tokens: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def size_filter(max_tokens: int) -> Callable[[str, int], bool]:
    """Self-attention layer filter by map size (P2P: coarse layers carry the layout)."""
    return lambda name, n_tokens: n_tokens <= max_tokens
