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
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.diffusion.inversion import ddim_invert
from pipeline.diffusion.pnp import PnPCandidate, pnp_edit
from pipeline.diffusion.sampler import vae_decode
from pipeline.diffusion.text2image import generate_base
from tests.diffusion_fixtures import CAPTION, SIZE, STEPS, one_thread, photo, sd, sd_deep  # noqa: F401

FEAT, SELF = ["up_blocks.1.resnets.1"], ["up_blocks.*attn1*"]


@pytest.mark.parametrize("which", ["sd", "sd_deep"])
def test_pnp_with_the_source_caption_reconstructs_from_the_generation_trajectory(which, request):
    comps = request.getfixturevalue(which)
    traj: list = []
    img = generate_base(comps, CAPTION, seed=3, steps=STEPS, guidance=7.0, size=SIZE, trajectory=traj)
    assert len(traj) == STEPS + 1
    cands = [PnPCandidate(7.0, 1.0, 0.8), PnPCandidate(7.0, 0.6, 0.8)]
    imgs, lat = pnp_edit(comps, traj, CAPTION, CAPTION, cands, steps=STEPS, feature_layers=FEAT, self_layers=SELF)
    for out in imgs:
        assert np.abs(out.astype(int) - img).max() <= 1


def test_inversion_is_the_exact_inverse_of_ddim_for_a_zero_noise_unet(sd):
    from pipeline.models.sd import tiny_unet, with_unet

    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.zero_(); unet.conv_out.bias.zero_()
    comps = with_unet(sd, unet)
    img = photo()
    traj = ddim_invert(comps, img, CAPTION, STEPS)
    _, lat = pnp_edit(comps, traj, CAPTION, CAPTION, [PnPCandidate(8.0, 0.7, 0.8)], steps=STEPS,
                      feature_layers=FEAT, self_layers=SELF)
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
    imgs, lat = pnp_edit(sd, traj, CAPTION, "a watercolour painting of a tabby cat on a red sofa", cands,
                         steps=STEPS, feature_layers=FEAT, self_layers=SELF)
    rec = vae_decode(sd, traj[-1])[0]
    assert not np.array_equal(imgs[0], rec) and not np.array_equal(imgs[0], imgs[1])
    torch.testing.assert_close(lat[0], traj[-1][0])


def test_layer_patterns_that_match_nothing_name_the_config_field(sd):
    traj = [torch.zeros(1, 4, SIZE // 2, SIZE // 2)] * (STEPS + 1)
    with pytest.raises(ValueError, match="diffusion.pnp_feature_layers"):
        pnp_edit(sd, traj, CAPTION, CAPTION, [PnPCandidate(7, 1, 0.8)], steps=STEPS,
                 feature_layers=["up_blocks.9.resnets.9"], self_layers=SELF)
    with pytest.raises(ValueError, match="diffusion.pnp_self_layers"):
        pnp_edit(sd, traj, CAPTION, CAPTION, [PnPCandidate(7, 1, 0.8)], steps=STEPS,
                 feature_layers=FEAT, self_layers=["nowhere.*"])
