"""Diffusion pair generators (Emu Edit supplementary 7.2): base images, mask-blended prompt-to-prompt
(local, texture, add, remove, global), Plug-and-Play on DDIM inversions (style) and background
inpainting — all candidates of a sample in one UNet batch with one shared source branch.

    config.py      DiffusionConfig (the job's ``diffusion`` block)
    processors.py  attention control as diffusers attention processors + feature hooks
    tokens.py      token alignment of two captions (cross-attention injection)
    sampler.py     the batched DDIM loop, text / noise / VAE helpers, mask blending, paste-back
    text2image.py  base images (StableDiffusionPipeline)
    inversion.py   DDIM inversion
    p2p.py, pnp.py, inpaint.py   the three generators
    recipes.py     per-task recipes: parameter sampling, candidates, directions
"""
