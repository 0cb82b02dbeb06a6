"""Mask-blended prompt-to-prompt on tiny random Stable Diffusion components.

What is guaranteed, and tested here:
  * attention control: the processors install on any UNet (two shapes), inject exactly what P2P
    prescribes (self: the source's map on the candidate's values; cross: the source's columns on
    the tokens both captions share) and are removed afterwards;
  * mask blending: where the latent mask is 0 a candidate's final latent *equals* the source's;
    with paste-back, pixels outside the pixel mask equal the input exactly; without it, the VAE
    decoder (convolutions and a mid-block attention) may move outside pixels, so only "much less
    than inside and than an unblended edit" is asserted;
  * identical captions, full injection and the source's guidance reproduce the input, whatever the
    batch holds (a row-layout bug would break it);
  * candidates in one batch give what each gives alone;
  * injection is counted per (kind, layer, step): self-attention only in layers with at most
    ``self_max_tokens`` tokens for the first N_s steps, cross-attention in every cross layer for the
    first N_c, none with ``inject=False``, and an edit with injection differs from one without.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from pipeline.diffusion.p2p import P2PCandidate, P2PSource, p2p_edit
from pipeline.diffusion.processors import AttentionControl, BatchLayout, ControlledAttnProcessor, controlled
from pipeline.diffusion.sampler import latent_mask
from pipeline.diffusion.text2image import generate_base
from pipeline.diffusion.tokens import common_words, token_alignment
from pipeline.models.tiny import tiny_tokenizer
from tests.diffusion_fixtures import CAPTION, SIZE, STEPS, blob_mask, one_thread, sd, sd_deep  # noqa: F401

TARGET = "a small dog sitting on a red sofa"


@pytest.fixture(scope="module")
def base(sd):
    return generate_base(sd, CAPTION, seed=11, steps=STEPS, guidance=7.5, size=SIZE)


def test_token_alignment_marks_shared_tokens_only():
    tok = tiny_tokenizer()
    tmap, alpha = token_alignment(tok, CAPTION, TARGET)
    s = tok(CAPTION)["input_ids"]
    t = tok(TARGET)["input_ids"]
    for i, tid in enumerate(t):
        if alpha[i] == 1:
            assert s[int(tmap[i])] == tid                    # an aligned token is the same token
    new = {tok.convert_ids_to_tokens(t[i]) for i in range(len(t)) if alpha[i] == 0}
    assert new == {"small", "dog"}
    assert {"sitting", "red", "sofa"} <= set(common_words(tok, CAPTION, TARGET))
    assert alpha[len(t):].eq(1).all()                        # padding aligned to padding


def _attn_batch(cross: bool):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12 if cross else None, heads=2, dim_head=8)
    lay = BatchLayout(n_cand=2, source_cfg=True)             # rows: src_u c1_u c2_u | src_c c1_c c2_c
    x = torch.randn(lay.size, 10, 16)
    ctx = torch.randn(lay.size, 7, 12) if cross else None
    return attn, lay, x, ctx


def _qkv(attn, x, ctx):
    b = x.shape[0]
    src = x if ctx is None else ctx
    f = lambda t: t.view(b, -1, attn.heads, 8).transpose(1, 2)       # noqa: E731
    return f(attn.to_q(x)), f(attn.to_k(src)), f(attn.to_v(src))


def _finish(attn, o):
    b = o.shape[0]
    return attn.to_out[0](o.transpose(1, 2).reshape(b, -1, attn.heads * 8))


@torch.no_grad()
def test_self_attention_injection_is_the_source_map_on_the_candidate_values():
    attn, lay, x, _ = _attn_batch(cross=False)
    ctl = AttentionControl(lay, self_steps=[3, 1])
    attn.set_processor(ControlledAttnProcessor(ctl, "t"))
    ctl.set_step(2)                                           # candidate 0 injected, candidate 1 not
    out = attn(x)
    q, k, v = _qkv(attn, x, None)
    c0, c1, src = lay.cand_c(0), lay.cand_c(1), lay.src_c
    want0 = _finish(attn, torch.softmax(q[src:src + 1] @ k[src:src + 1].transpose(-1, -2) * attn.scale, -1) @ v[c0:c0 + 1])
    want1 = _finish(attn, torch.softmax(q[c1:c1 + 1] @ k[c1:c1 + 1].transpose(-1, -2) * attn.scale, -1) @ v[c1:c1 + 1])
    torch.testing.assert_close(out[c0:c0 + 1], want0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[c1:c1 + 1], want1, atol=1e-5, rtol=1e-5)
    # P2P leaves the unconditional half alone
    u0 = lay.cand_u(0)
    want_u = _finish(attn, torch.softmax(q[u0:u0 + 1] @ k[u0:u0 + 1].transpose(-1, -2) * attn.scale, -1) @ v[u0:u0 + 1])
    torch.testing.assert_close(out[u0:u0 + 1], want_u, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cross_attention_injection_takes_source_columns_on_shared_tokens():
    attn, lay, x, ctx = _attn_batch(cross=True)
    tmap = torch.tensor([[0, 1, 1, 2, 3, 4, 5]] * 2)          # position 2 is new in the target
    alpha = torch.tensor([[1., 1., 0., 1., 1., 1., 1.]] * 2)
    ctl = AttentionControl(lay, self_steps=[0, 0], cross_steps=[5, 5], token_map=tmap, token_alpha=alpha)
    attn.set_processor(ControlledAttnProcessor(ctl, "t"))
    ctl.set_step(0)
    out = attn(x, encoder_hidden_states=ctx)
    q, k, v = _qkv(attn, x, ctx)
    c, s = lay.cand_c(1), lay.src_c
    p_s = torch.softmax(q[s] @ k[s].transpose(-1, -2) * attn.scale, -1)
    p_c = torch.softmax(q[c] @ k[c].transpose(-1, -2) * attn.scale, -1)
    p = p_s[..., tmap[1]] * alpha[1] + p_c * (1 - alpha[1])
    torch.testing.assert_close(out[c], _finish(attn, (p @ v[c])[None])[0], atol=1e-5, rtol=1e-5)


def test_schedules_and_token_map_follow_the_unet_device():
    # found on the first GPU run: the token map, built on the CPU by the tokenizer, was indexed with
    # row indices on the GPU. The "meta" device stands in for a GPU here.
    lay = BatchLayout(2)
    ctl = AttentionControl(lay, self_steps=[3, 0], cross_steps=[5, 5], token_map=torch.zeros(2, 7, dtype=torch.long),
                           token_alpha=torch.ones(2, 7))
    ctl.set_step(0, "meta")
    pairs = [ctl.pairs(k) for k in ("self", "cross")]
    assert all(t.device.type == "meta" for p in pairs for t in (p.dst, p.src, p.cand))
    assert ctl.token_map.device.type == "meta" and ctl.token_alpha.device.type == "meta"
    assert ctl.pairs("feature") is None and pairs[0].dst.shape == (1,) and pairs[1].dst.shape == (2,)


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_processors_install_run_and_restore_on_two_unet_shapes(which, request, base):
    comps = request.getfixturevalue(which)
    before = {k: type(v) for k, v in comps.unet.attn_processors.items()}
    img = base if which == "sd" else generate_base(comps, CAPTION, seed=11, steps=STEPS, guidance=7.5, size=SIZE)
    lay = BatchLayout(1)
    ctl = AttentionControl(lay, self_steps=[STEPS], cross_steps=[STEPS],
                           token_map=torch.arange(77)[None], token_alpha=torch.ones(1, 77))
    with controlled(comps.unet, ctl):
        procs = comps.unet.attn_processors
        assert len(procs) == len(before) and all(isinstance(p, ControlledAttnProcessor) for p in procs.values())
    assert {k: type(v) for k, v in comps.unet.attn_processors.items()} == before
    res = p2p_edit(comps, P2PSource(CAPTION, img, seed=11), TARGET,
                   [P2PCandidate(6.0, 0.6, 0.6, 0.1, blob_mask())], steps=STEPS)
    assert res.images[0].shape == img.shape and not np.array_equal(res.images[0], img)


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_identical_captions_full_injection_reproduce_the_input(which, request):
    comps = request.getfixturevalue(which)
    img = generate_base(comps, CAPTION, seed=5, steps=STEPS, guidance=6.0, size=SIZE)
    cands = [P2PCandidate(6.0, 1.0, 1.0, 0.0, None) for _ in range(3)]        # blank mask, no replacement
    res = p2p_edit(comps, P2PSource(CAPTION, img, seed=5, guidance=6.0), CAPTION, cands, steps=STEPS)
    for out in res.raw_images:
        assert np.abs(out.astype(int) - img).max() <= 1           # the source regenerated = the base
    torch.testing.assert_close(res.latents[1:], res.latents[:1].expand(3, -1, -1, -1), atol=1e-4, rtol=1e-4)
    # "full injection": without it identical captions reproduce the input trivially, so check it ran
    assert {kind for kind, _, step in res.injections if step == STEPS - 1} == {"self", "cross"}, res.injections


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_injection_happens_on_the_configured_layers_and_steps_only(which, request):
    comps = request.getfixturevalue(which)
    img = generate_base(comps, CAPTION, seed=7, steps=STEPS, guidance=7.5, size=SIZE)
    # N_s = 0.5 → steps 0..2, N_c = 1/3 → steps 0..1; one call per layer and step
    cand = [P2PCandidate(7.5, 1 / 3, 0.5, 0.0, None)]
    res = p2p_edit(comps, P2PSource(CAPTION, img, seed=7), TARGET, cand, steps=STEPS, self_max_tokens=256)
    names = [n.removesuffix(".processor") for n in comps.unet.attn_processors]
    # 64 px → 32×32 latents: the self-attention layers at 16×16 or coarser (≤ 256 tokens) are shared,
    # 32×32 ones not
    coarse = {"sd": ("down_blocks.1.", "mid_block.", "up_blocks.0."),
              "sd_deep": ("down_blocks.1.", "mid_block.", "up_blocks.1.")}[which]
    self_l = {n for n in names if n.endswith("attn1") and n.startswith(coarse)}
    cross_l = {n for n in names if n.endswith("attn2")}
    assert self_l and cross_l
    if which == "sd_deep":
        assert any(n.endswith("attn1") and n not in self_l for n in names)     # 32×32 layers exist, untouched
    want = ({("self", n, i): 1 for n in self_l for i in range(3)}
            | {("cross", n, i): 1 for n in cross_l for i in range(2)})
    assert dict(res.injections) == want
    off = p2p_edit(comps, P2PSource(CAPTION, img, seed=7), TARGET, cand, steps=STEPS, inject=False)
    assert not off.injections
    # and injection changes the edit
    d = (res.latents[1] - off.latents[1]).abs().mean().item()
    assert d > 1e-3 * off.latents[1].abs().mean().item(), d


def test_outside_the_mask_stays_the_input(sd, base):
    mask = blob_mask()
    src = P2PSource(CAPTION, base, seed=11)
    cands = [P2PCandidate(7.0, 0.5, 0.5, 0.05, mask), P2PCandidate(7.0, 0.5, 0.5, 0.05, None)]
    res = p2p_edit(sd, src, TARGET, cands, steps=STEPS, paste=False)
    # latent space: exactly the source wherever the latent mask is 0
    lm = latent_mask(mask, res.latents.shape[-2:], "cpu", torch.float32)[0, 0]
    outside = (res.latents[1] - res.latents[0])[:, lm == 0]
    assert outside.abs().max().item() <= 1e-6
    assert (res.latents[1] - res.latents[0])[:, lm > 0].abs().mean().item() > 1e-3          # it did edit
    # pixel space without paste-back: the decoder mixes latents, so outside moves a little only
    blended, free = res.raw_images[0].astype(int), res.raw_images[1].astype(int)
    out_px = mask == 0
    d_out, d_in = np.abs(blended - base)[out_px].mean(), np.abs(blended - base)[~out_px].mean()
    d_free = np.abs(free - base)[out_px].mean()
    assert d_out < 0.25 * d_in and d_out < 0.25 * d_free, (d_out, d_in, d_free)
    # with paste-back (the default): outside the precise mask the pixels are the input's, exactly
    res2 = p2p_edit(sd, src, TARGET, cands[:1], steps=STEPS, paste=True)
    assert np.array_equal(res2.images[0][out_px], base[out_px])
    assert not np.array_equal(res2.images[0][~out_px], base[~out_px])


def test_blend_s_replaces_the_edit_in_the_first_steps(sd, base):
    """blend_s = 1 keeps the candidate on the source for every step: nothing can change."""
    res = p2p_edit(sd, P2PSource(CAPTION, base, seed=11), TARGET, [P2PCandidate(7.0, 0.3, 0.3, 1.0, None)],
                   steps=STEPS, paste=False)
    torch.testing.assert_close(res.latents[1], res.latents[0])


def test_batched_candidates_equal_each_run_alone(sd, base):
    src = P2PSource(CAPTION, base, seed=11)
    cands = [P2PCandidate(4.5, 0.3, 0.8, 0.02, blob_mask()), P2PCandidate(7.5, 0.9, 0.4, 0.2, None),
             P2PCandidate(6.0, 0.5, 0.5, 0.1, blob_mask())]
    together = p2p_edit(sd, src, TARGET, cands, steps=STEPS, paste=False).latents[1:]
    alone = torch.cat([p2p_edit(sd, src, TARGET, [c], steps=STEPS, paste=False).latents[1:] for c in cands])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_real_photo_source_is_held_to_its_inversion(sd):
    from pipeline.diffusion.inversion import ddim_invert
    from tests.diffusion_fixtures import photo

    img = photo()
    traj = ddim_invert(sd, img, CAPTION, STEPS)
    mask = blob_mask()
    res = p2p_edit(sd, P2PSource(CAPTION, img, trajectory=traj), TARGET,
                   [P2PCandidate(6.0, 0.5, 0.5, 0.1, mask)], steps=STEPS)
    torch.testing.assert_close(res.latents[0], traj[-1][0])         # the source ends on the photo's latent
    assert np.array_equal(res.images[0][mask == 0], img[mask == 0])
