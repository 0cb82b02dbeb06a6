"""Base images, background inpainting, config and the two diffusion stages on tiny models.
The job-level test (vLLM + Ray + every diffusion task) is marked slow."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.diffusion.inpaint import InpaintCandidate, inpaint_candidates
from pipeline.diffusion.text2image import generate_base
from tests.diffusion_fixtures import CAPTION, SIZE, STEPS, blob_mask, one_thread, photo, sd  # noqa: F401


@pytest.fixture(scope="module")
def sd_inpaint():
    from pipeline.models.sd import load_sd
    return load_sd(inpaint=True, role="inpaint")


def test_base_image_is_deterministic_per_seed(sd):
    a = generate_base(sd, CAPTION, seed=1, steps=STEPS, guidance=7.5, size=SIZE)
    b = generate_base(sd, CAPTION, seed=1, steps=STEPS, guidance=7.5, size=SIZE)
    c = generate_base(sd, CAPTION, seed=2, steps=STEPS, guidance=7.5, size=SIZE)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_zero_terminal_snr_option():
    from pipeline.models.sd import load_sd
    comps = load_sd(zero_terminal_snr=True)
    s = comps.scheduler
    assert s.config.rescale_betas_zero_snr and s.config.timestep_spacing == "trailing"
    assert float(s.alphas_cumprod[-1]) == 0.0 and s.config.prediction_type == "v_prediction"
    img = generate_base(comps, CAPTION, seed=1, steps=STEPS, guidance=7.5, size=SIZE, guidance_rescale=0.7)
    assert img.std() > 0


def test_random_sd15_has_the_real_architecture():
    """``random-sd15`` (GPU benchmarks) is SD 1.5's shapes; built on the meta device: no memory, no time."""
    from pipeline.models.sd import random_sd15
    comps = random_sd15("meta")
    assert sum(p.numel() for p in comps.unet.parameters()) == pytest.approx(859.52e6, rel=1e-4)
    assert comps.unet.config.cross_attention_dim == comps.text_encoder.config.hidden_size == 768
    assert comps.vae_scale == 8 and comps.pixel_multiple == 64
    assert random_sd15("meta", inpaint=True).unet.config.in_channels == 9


def test_background_inpainting_keeps_the_foreground_and_varies_the_candidates(sd_inpaint):
    img = photo()
    bg = 255 - blob_mask()                               # background = complement of the object
    cands = [InpaintCandidate(5.0 + i, seed=100 + i) for i in range(4)]
    outs = inpaint_candidates(sd_inpaint, img, bg, "a cat on a snowy mountain pass", cands, steps=STEPS)
    fg = bg == 0
    for o in outs:
        assert np.array_equal(o[fg], img[fg])            # blended: the object's pixels are the input's
        assert np.abs(o.astype(int) - img)[~fg].mean() > 5
    assert len({o.tobytes() for o in outs}) == 4
    alone = inpaint_candidates(sd_inpaint, img, bg, "a cat on a snowy mountain pass", cands[2:3], steps=STEPS)
    assert np.abs(alone[0].astype(int) - outs[2]).max() <= 1          # batching changes nothing


def test_job_config_has_the_diffusion_block_and_paper_profile_validates():
    import yaml

    from pipeline.config import REPO_ROOT, JobConfig
    cfg = JobConfig.model_validate({"tasks": {"local": 1, "style": 1}, "diffusion": {"steps": 4, "candidates": 3}})
    assert cfg.diffusion.local.guidance.low == 4 and cfg.diffusion.global_edit.blend_s.low == 0.1
    assert cfg.diffusion.style.feature_frac == 0.8 and cfg.diffusion.style.guidance.high == 10
    with pytest.raises(Exception, match="diffusion.steps"):
        JobConfig.model_validate({"diffusion": {"steps": 1}})
    paper = yaml.safe_load((REPO_ROOT / "deploy/profiles/paper.yaml").read_text())
    assert JobConfig.model_validate(paper).diffusion.steps == 50


# ------------------------------------------------------------------------------------- stages

def _cfg(**diff):
    from pipeline.config import JobConfig
    return JobConfig.model_validate({
        "tasks": {t: 1 for t in ("local", "texture", "add", "remove", "global", "background", "style")},
        "diffusion": {"steps": 3, "inpaint_steps": 3, "candidates": 4, "resolution": 32, **diff},
    }).model_dump(mode="json")


def _row(task, answer, *, image=None, masks=None, seed=7):
    from pipeline.schema import new_flow_row
    from pipeline.sources import encode_png
    return new_flow_row(sample_index=0, id=f"id-{task}", source_id="s", attempt=0, task=task, seed=seed,
                        caption=CAPTION, plan="{}", answer=json.dumps(answer),
                        input_png=encode_png(image) if image is not None else None,
                        masks=[{"variant": k, "png": encode_png(v)} for k, v in (masks or {}).items()] or None)


def test_stages_make_candidates_for_every_diffusion_task():
    import cv2

    from pipeline.schema import flow_table
    from pipeline.sources import decode_png
    from pipeline.stages.diffusion import DiffusionBaseStage, DiffusionEditStage

    cfg = _cfg()
    base_stage, edit_stage = DiffusionBaseStage(cfg), DiffusionEditStage(cfg)
    ans = {"instruction": "x", "output_caption": "a small dog sitting on a red sofa",
           "original_object": "cat", "edited_object": "dog"}
    rows = [_row("local", ans), _row("texture", ans), _row("remove", ans), _row("add", ans),
            _row("global", ans), _row("style", ans, image=photo(48)), _row("background", ans, image=photo(48)),
            _row("local", ans | {"instruction": "no mask"}), _row("color", ans)]
    out = base_stage(flow_table(rows)).to_pylist()
    for r in out[:7]:
        assert r["input_png"] is not None and json.loads(r["params"])["base"]
    assert decode_png(out[5]["input_png"]).shape == (32, 32, 3)          # the photo fitted to the resolution
    assert json.loads(out[3]["params"])["base"]["prompt"] == ans["output_caption"]    # add: y from the output
    # what the grounding stage would add: masks on the base image
    m = (cv2.resize(blob_mask(), (32, 32), interpolation=cv2.INTER_NEAREST))
    region = {"precise": m, "dilated_blurred": cv2.GaussianBlur(cv2.dilate(m, np.ones((5, 5))), (5, 5), 2),
              "bbox": cv2.rectangle(np.zeros_like(m), (8, 8), (24, 24), 255, -1)}
    from pipeline.sources import encode_png
    for r in out[:4]:
        r["masks"] = [{"variant": k, "png": encode_png(v)} for k, v in region.items()]
    out[6]["masks"] = [{"variant": "background", "png": encode_png(255 - m)}]
    out = edit_stage(flow_table(out)).to_pylist()

    for r in out[:7]:
        assert r["status"] == "pending", (r["task"], r["reject_reason"], r["reject_detail"])
        assert r["output_png"] is None and len(r["candidates"]) == 4
        p = json.loads(r["params"])
        assert p["base"] and len(p["candidates"]) == 4
        for c in r["candidates"]:
            cp = json.loads(c["params"])
            assert decode_png(c["input_png"]).shape == decode_png(c["output_png"]).shape
            if r["task"] in ("local", "texture", "add", "remove", "global"):
                assert {"guidance", "n_cross", "n_self", "blend_s", "mask_variant", "steps"} <= set(cp)
                lo, hi = (0.1, 0.2) if r["task"] == "global" else (0.02, 0.2)
                assert lo <= cp["blend_s"] <= hi and 4 <= cp["guidance"] <= 8
            if r["task"] in ("local", "texture", "add", "remove"):
                assert c["mask_png"] is not None and c["mask_variant"] in region
    local = out[0]
    assert {c["mask_variant"] for c in local["candidates"]} == set(region)     # variants cycled
    # add: the pair is (edited x, base y): y is the stored base
    add = out[3]
    assert all(c["output_png"] == add["input_png"] for c in add["candidates"])
    assert all(c["input_png"] != add["input_png"] for c in add["candidates"])
    style = json.loads(out[5]["candidates"][0]["params"])
    assert style["recipe"] == "pnp" and 6.5 <= style["guidance"] <= 10 and style["source"] == "ddim_inversion"
    bg = out[6]["candidates"][0]
    assert bg["mask_variant"] == "background" and json.loads(bg["params"])["recipe"] == "inpaint"
    assert out[7]["status"] == "rejected" and out[7]["reject_reason"] == "no_mask"
    assert out[8]["status"] == "pending" and out[8]["candidates"] is None                 # not a diffusion task


def test_stage_rows_do_not_depend_on_their_batch_or_the_stage_instance():
    """What a resumed job relies on: a row gets the same candidates (bytes and parameters) whether
    it runs in a batch with other rows or alone, in another order, in a freshly built stage."""
    import cv2

    from pipeline.schema import flow_table
    from pipeline.sources import encode_png
    from pipeline.stages.diffusion import DiffusionBaseStage, DiffusionEditStage

    ans = {"instruction": "x", "output_caption": "a small dog sitting on a red sofa",
           "original_object": "cat", "edited_object": "dog"}
    m = cv2.resize(blob_mask(), (32, 32), interpolation=cv2.INTER_NEAREST)
    rows = [_row("local", ans, seed=3), _row("style", ans, image=photo(48), seed=4),
            _row("background", ans, image=photo(48), seed=5)]
    masks = {"local": [{"variant": v, "png": encode_png(m)} for v in ("precise", "dilated_blurred", "bbox")],
             "background": [{"variant": "background", "png": encode_png(255 - m)}]}

    def run(batch):
        cfg = _cfg(candidates=3)
        out = DiffusionBaseStage(cfg)(flow_table(batch)).to_pylist()
        for r in out:
            r["masks"] = masks.get(r["task"])
        out = DiffusionEditStage(cfg)(flow_table(out)).to_pylist()
        return {r["id"]: (r["input_png"], r["params"], [(c["input_png"], c["output_png"], c["params"])
                                                        for c in r["candidates"]]) for r in out}

    together = run(rows)
    alone = {}
    for r in reversed(rows):
        alone |= run([r])
    assert set(together) == {r["id"] for r in rows}
    assert all(len(v[2]) == 3 for v in together.values())
    assert together == alone


def test_tasks_are_runnable():
    from tasks import implemented
    assert {"local", "texture", "add", "remove", "global", "background", "style"} <= set(implemented())


# ------------------------------------------------------------------------------------- job

@pytest.mark.slow
def test_job_with_every_diffusion_task(vllm_url, tmp_path):
    """All seven diffusion tasks through `pairforge run` on the embedded default (SmolLM2 on vLLM,
    tiny random vision models). Filters are off: the tiny random CLIP judges nothing meaningful,
    and the point here is that every row flows and the shards carry parameters and masks.
    The job keeps every candidate (output.keep_candidates: all): candidates/ is committed and
    verified, `pairforge export-preference` makes DPO pairs of it that open in `datasets` with every
    image decoding, and the HTML report shows the candidates' strips with their images."""
    import pyarrow.parquet as pq

    from tests.jobutil import run_cli, stats, write_job

    tasks = {t: 1.0 for t in ("local", "texture", "add", "remove", "global", "background", "style")}
    job = write_job(tmp_path / "job.yaml", vllm_url, tasks=tasks, source__limit=14, source__repeats=1,
                    filters__enabled=False, output__keep_candidates="all",
                    diffusion={"steps": 3, "inpaint_steps": 3, "candidates": 3, "resolution": 32})
    out = tmp_path / "out"
    run_cli("run", str(job), "--out", str(out), "--no-progress", timeout=1800)
    s = stats(out)
    assert s["complete"] and s["samples"] == 14
    rows = [r for d in ("data", "rejects") if (out / d).exists() for r in pq.read_table(out / d).to_pylist()]
    assert len(rows) == 14
    errors = [(r["task"], r["reject_stage"], r["reject_detail"]) for r in rows if r["reject_reason"] == "stage_error"]
    assert not errors, errors
    edit_rejects = {r["reject_reason"] for r in rows if r["reject_stage"] == "diffusion_edit"}
    assert edit_rejects <= {"no_mask"}
    accepted = [r for r in rows if r["status"] == "accepted"]
    assert accepted                                     # SmolLM2 answers well enough for some
    for r in accepted:
        p = json.loads(r["params"])
        assert r["input_image"] and r["output_image"] and p.get("base") and "guidance" in p, (r["task"], p)
        if r["task"] in ("local", "texture", "add", "remove"):
            assert {m["variant"] for m in r["masks"]} >= {"precise", "bbox"} and r["mask"] is not None
            assert {"n_cross", "n_self", "blend_s"} <= set(p)
        if r["task"] == "background":
            assert r["mask_variant"] == "background" and r["mask"] is not None
        if r["task"] == "style":
            assert p["recipe"] == "pnp" and "n_self" in p
    assert run_cli("verify", str(out)).returncode == 0
    _check_candidates_and_preference(out, rows, tmp_path)


def _check_candidates_and_preference(out, rows, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from pipeline.report_html import write_html
    from tests.jobutil import run_cli

    cands = pq.read_table(out / "candidates").to_pylist()
    judged = {r["sample_index"]: json.loads(r["provenance"]["candidates"]) for r in rows if r["provenance"]["candidates"]}
    assert judged and {c["sample_index"] for c in cands} == {i for i, j in judged.items() if len(j["candidates"]) > 1}
    for i, j in judged.items():                     # every candidate but the kept one, each once
        got = sorted(c["candidate"] for c in cands if c["sample_index"] == i)
        assert got == [k for k in range(len(j["candidates"])) if k != j["selected"]]
    assert all(c["output_image"]["bytes"] for c in cands)
    accepted = sum(r["status"] == "accepted" for r in rows)
    dest = tmp_path / "pref" / "train.parquet"
    c = json.loads(run_cli("export-preference", str(out), str(dest)).stdout)
    assert c["accepted_samples"] == accepted and 1 <= c["pairs"] <= 2 * accepted, c
    ds = datasets.load_dataset("parquet", data_files=str(dest), split="train")
    assert len(ds) == c["pairs"]
    for r in ds:
        assert r["instruction"] and r["margin"] is not None and r["score_source"] == "filter:clip_dir"
        for k in ("input_image", "chosen_image", "rejected_image"):
            r[k].load()
            assert r[k].size[0] > 0
        assert r["chosen_scores"]["clip_dir"] == r["chosen_score"]
    page = write_html(out, tmp_path / "report.html").read_text()
    assert page.count('class="cand kept"') >= 1 and "scores only" not in page


def test_add_edit_on_a_generated_base_clears_the_change_floor(one_thread):
    """The embedded default's add recipe: base y from the output caption, P2P back to the input
    caption inside the object. With the stand-in UNet's text pathway at random-init strength every
    candidate stayed under the region floor (≤ 0.9% mean change, ≤ 3% of the pixels: a demo of no
    add pairs); ``TINY_TEXT_GAIN`` makes some candidates real edits while the most injected stay put."""
    from filters.config import DEFAULT_CHANGE_FLOORS
    from filters.min_change import change_measures
    from pipeline.diffusion.config import DiffusionConfig
    from pipeline.diffusion.recipes import DiffusionGenerators

    g = DiffusionGenerators(DiffusionConfig(), "tiny-random", None)
    y, base = g.base_image("a small white dog on a sofa wearing a red hat", 1234)
    m = np.zeros(y.shape[:2], np.uint8)
    m[y.shape[0] // 4: 3 * y.shape[0] // 4, y.shape[1] // 4: 3 * y.shape[1] // 4] = 255
    cands = g.p2p_candidates("add", y, base, "a small white dog on a sofa wearing a red hat",
                             "a small white dog on a sofa", {"precise": m}, np.random.default_rng(1))
    floor = DEFAULT_CHANGE_FLOORS["add"]
    measured = [change_measures(c.input_image, c.output_image, m > 0) for c in cands]
    passing = [(l1, frac) for l1, frac in measured if l1 >= floor.min_l1 or frac >= floor.min_frac]
    assert passing, f"every add candidate is a no-op: {measured}"
    assert len(passing) < len(cands), "strongly injected candidates should stay close to the base"
