"""Plug-and-Play (style) on tiny random Stable Diffusion components.

Reconstruction, stated precisely:
  * from a generation trajectory (a generated base; no inversion error), PnP with the source
    caption and the base's guidance reproduces the base within 1 grey level, with feature and
    self-attention injection active — both UNet shapes (each CFG half is injected from the matching
    half of the source; injecting the conditional source into both halves, as a single source row
    would, leaves a mean error of about 3 grey levels);
  * DDIM inversion is the exact inverse of the DDIM step: with a UNet whose output layer is zeroed
    (noise prediction ≡ 0) inversion + PnP returns the input latent to 1e-5 and its VAE round trip.
    With a random-init UNet the inversion approximation itself (noise predicted one step off) is
    large, because a random network is no denoiser; on trained weights it is the usual DDIM
    inversion error, which the held source branch keeps out of the injected features.

Injection itself, each test failing with it switched off (``inject=False``):
  * the processors and hooks inject exactly on the configured layers and steps, and never off;
  * a style candidate with injection differs from the same candidate without it;
  * (slow) it stays closer to the source's structure: Sobel edge maps of the output correlate
    better with the source's than without injection, on every one of six random UNets.
"""
from __future__ import annotations

import fnmatch

import cv2
import numpy as np
import pytest
import torch

from pipeline.diffusion.inversion import ddim_invert
from pipeline.diffusion.pnp import PnPCandidate, pnp_edit
from pipeline.diffusion.sampler import vae_decode
from pipeline.diffusion.text2image import generate_base
from tests.diffusion_fixtures import CAPTION, SIZE, STEPS, one_thread, photo, sd, sd_deep  # noqa: F401

FEAT, SELF = ["up_blocks.1.resnets.1"], ["up_blocks.*attn1*"]
STYLE = "a watercolour painting of a tabby cat on a red sofa"


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_pnp_with_the_source_caption_reconstructs_from_the_generation_trajectory(which, request):
    comps = request.getfixturevalue(which)
    traj: list = []
    img = generate_base(comps, CAPTION, seed=3, steps=STEPS, guidance=7.0, size=SIZE, trajectory=traj)
    assert len(traj) == STEPS + 1
    cands = [PnPCandidate(7.0, 1.0, 0.8), PnPCandidate(7.0, 0.6, 0.8)]
    res = pnp_edit(comps, traj, CAPTION, CAPTION, cands, steps=STEPS, feature_layers=FEAT, self_layers=SELF)
    for out in res.images:
        assert np.abs(out.astype(int) - img).max() <= 1
    # the claim is "with injection active": without it the source caption reproduces the base trivially
    kinds = {kind for kind, _, _ in res.injections}
    assert kinds == {"feature", "self"}, res.injections


def test_inversion_is_the_exact_inverse_of_ddim_for_a_zero_noise_unet(sd):
    from pipeline.models.sd import tiny_unet, with_unet

    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.zero_(); unet.conv_out.bias.zero_()
    comps = with_unet(sd, unet)
    img = photo()
    traj = ddim_invert(comps, img, CAPTION, STEPS)
    lat = pnp_edit(comps, traj, CAPTION, CAPTION, [PnPCandidate(8.0, 0.7, 0.8)], steps=STEPS,
                   feature_layers=FEAT, self_layers=SELF).latents
    torch.testing.assert_close(lat[1], traj[-1][0], atol=1e-5, rtol=1e-5)
    # with zero noise, z_T = sqrt(ᾱ_T / ᾱ_0) z_0: the trajectory really walks the schedule
    sched = comps.scheduler
    ratio = (sched.alphas_cumprod[int(sched.timesteps[0])] / sched.final_alpha_cumprod).sqrt()
    torch.testing.assert_close(traj[0], ratio * traj[-1], atol=1e-5, rtol=1e-4)


def test_style_candidates_differ_from_the_input_and_from_each_other(sd_deep):
    # the deep UNet: in the default tiny UNet the injected ResNet sits below every cross-attention,
    # so with features injected the caption barely reaches the output (a property of that layout)
    sd = sd_deep
    img = photo()
    traj = ddim_invert(sd, img, CAPTION, STEPS)
    cands = [PnPCandidate(6.5, 0.5, 0.8), PnPCandidate(10.0, 1.0, 0.8)]
    kw = dict(steps=STEPS, feature_layers=FEAT, self_layers=SELF)
    res = pnp_edit(sd, traj, CAPTION, STYLE, cands, **kw)
    imgs, lat = res.images, res.latents
    rec = vae_decode(sd, traj[-1])[0]
    assert not np.array_equal(imgs[0], rec) and not np.array_equal(imgs[0], imgs[1])
    torch.testing.assert_close(lat[0], traj[-1][0])
    # injection changes the result: the same candidates without it are other images
    plain = pnp_edit(sd, traj, CAPTION, STYLE, cands, inject=False, **kw)
    assert not plain.injections
    for j in range(2):
        d = (res.latents[1 + j] - plain.latents[1 + j]).abs().mean().item()
        assert d > 1e-2 * plain.latents[1 + j].abs().mean().item(), d
        assert not np.array_equal(imgs[j], plain.images[j])


def _self_layers(unet, patterns):
    names = [n.removesuffix(".processor") for n in unet.attn_processors]
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_injection_happens_on_the_configured_layers_and_steps_only(which, request):
    comps = request.getfixturevalue(which)
    traj = ddim_invert(comps, photo(), CAPTION, STEPS)
    # N_s = 0.5 → steps 0..2; feature_frac = 0.8 → round(4.8) = 5 steps, 0..4; one call per layer and step
    cand = [PnPCandidate(7.5, 0.5, 0.8)]
    res = pnp_edit(comps, traj, CAPTION, STYLE, cand, steps=STEPS, feature_layers=FEAT, self_layers=SELF)
    selfl = _self_layers(comps.unet, SELF)
    assert selfl and all(n.startswith("up_blocks.") and n.endswith("attn1") for n in selfl)
    want = {("feature", FEAT[0], i): 1 for i in range(5)} | {("self", n, i): 1 for n in selfl for i in range(3)}
    assert dict(res.injections) == want
    off = pnp_edit(comps, traj, CAPTION, STYLE, cand, steps=STEPS, feature_layers=FEAT, self_layers=SELF, inject=False)
    assert not off.injections


def _edges(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def _structure_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 − normalised cross-correlation of the Sobel edge magnitudes (0: the same edges)."""
    ea, eb = _edges(a), _edges(b)
    ea, eb = (ea - ea.mean()) / (ea.std() + 1e-6), (eb - eb.mean()) / (eb.std() + 1e-6)
    return 1.0 - float((ea * eb).mean())


@pytest.mark.slow
def test_injection_keeps_the_source_structure(sd):
    """PnP's point: the style edit keeps the input's layout. Set-up where a random network can show
    it: at full output scale a random-init UNet drives DDIM far from any image (final latents ~20×
    the input latent's norm away, with or without injection, edge correlation ≈ 0 for both), so the
    UNet's output layer is scaled by 0.01, a weak "denoiser" that keeps sampling near the image; and
    a random VAE does not reproduce the photo's edges (correlation ≈ 0.2), so structure is measured
    against the source branch's own decoded image (the input through the VAE). Six UNet seeds,
    realistic PnP settings (guidance 7.5, N_s 1.0, features for 0.8 of 10 steps). Measured:
    structure distance 0.28 with injection, 0.39 without (means; lower on every seed)."""
    from pipeline.models.sd import tiny_unet, with_unet

    steps, img = 10, photo()
    d_on, d_off = [], []
    for seed in range(6):
        unet = tiny_unet(seed=100 + seed)
        with torch.no_grad():
            unet.conv_out.weight.mul_(0.01); unet.conv_out.bias.mul_(0.01)
        comps = with_unet(sd, unet)
        traj = ddim_invert(comps, img, CAPTION, steps)
        src = vae_decode(comps, traj[-1])[0]
        kw = dict(steps=steps, feature_layers=FEAT, self_layers=SELF)
        on = pnp_edit(comps, traj, CAPTION, STYLE, [PnPCandidate(7.5, 1.0, 0.8)], **kw)
        off = pnp_edit(comps, traj, CAPTION, STYLE, [PnPCandidate(7.5, 1.0, 0.8)], inject=False, **kw)
        d_on.append(_structure_distance(on.images[0], src))
        d_off.append(_structure_distance(off.images[0], src))
    d_on, d_off = np.array(d_on), np.array(d_off)
    msg = f"structure distance with injection {d_on.round(3)}, without {d_off.round(3)}"
    assert d_on.mean() < d_off.mean() - 0.04, msg
    assert (d_on < d_off).sum() >= 5, msg


def test_layer_patterns_that_match_nothing_name_the_config_field(sd):
    traj = [torch.zeros(1, 4, SIZE // 2, SIZE // 2)] * (STEPS + 1)
    with pytest.raises(ValueError, match="diffusion.pnp_feature_layers"):
        pnp_edit(sd, traj, CAPTION, CAPTION, [PnPCandidate(7, 1, 0.8)], steps=STEPS,
                 feature_layers=["up_blocks.9.resnets.9"], self_layers=SELF)
    with pytest.raises(ValueError, match="diffusion.pnp_self_layers"):
        pnp_edit(sd, traj, CAPTION, CAPTION, [PnPCandidate(7, 1, 0.8)], steps=STEPS,
                 feature_layers=FEAT, self_layers=["nowhere.*"])
