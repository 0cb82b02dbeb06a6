"""The trainer on a tiny random-init model and small real shards (colour and sketch pairs made by
the project's own task code, written by the project's shard writer; instructions written here).

What must hold: training lowers the loss; a saved checkpoint reloads to identical outputs and a
resumed run ends where an uninterrupted one does; task inversion changes nothing but its own vector
and lowers its loss; sequential-edit thresholding keeps small changes out; edit and eval run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.schema import new_flow_row, sample_id, sample_seed
from pipeline.shards import Manifest, ShardWriter
from pipeline.sources import encode_png

SIDE = 48


def _photo(name: str):
    import cv2

    from pipeline.demo_data import load_demo_photo
    return cv2.resize(load_demo_photo(name), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def _color_instruction(plan: dict) -> str:
    # our own words, from the plan's phrases (what the LLM agent would have been asked to say)
    return "please " + " and ".join(op["phrase"] for op in plan["ops"])


def make_shards(out, n_color: int = 24, n_sketch: int = 8, rows_per_shard: int = 8, job_seed: int = 7):
    """A job output folder with accepted colour and sketch rows (tasks.color / tasks.translation)."""
    from pipeline.translate.annotators import Annotators
    from pipeline.config import JobConfig
    from tasks import get_task

    photos = [_photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")]
    color, sketch = get_task("color"), get_task("sketch")
    ann = Annotators(JobConfig(), {"sketch"})
    rows = []
    for i in range(n_color + n_sketch):
        task = "color" if i < n_color else "sketch"
        sid = sample_id(job_seed, f"src:{i}", task, 0)
        rng = np.random.default_rng(sample_seed(sid))
        img = photos[i % len(photos)]
        if task == "color":
            plan = color.plan(rng, "a photo")
            pair = color.make_pair(img, {}, plan, rng)
            instruction = _color_instruction(plan)
        else:
            plan = {"direction": "image_to_map"}
            pair = sketch.make_pair(img, {}, plan, rng, annotators=ann)
            instruction = "turn this photo into a line sketch"
        r = new_flow_row(sample_index=i, id=sid, source_id=f"src:{i}", attempt=0, task=task, seed=sample_seed(sid),
                         caption=f"photo number {i}")
        r.update(input_png=encode_png(pair.input_image), output_png=encode_png(pair.output_image),
                 answer=json.dumps({"instruction": instruction, "output_caption": f"edited photo number {i}"}),
                 params=json.dumps(pair.params), scores=json.dumps({"l1": 0.1}),
                 llm=json.dumps({"backend": "test", "model": "none"}))
        rows.append(r)
    n = len(rows)
    n_shards = (n + rows_per_shard - 1) // rows_per_shard
    m = Manifest(out)
    m.init(config_hash="h", job_name="trainer-test", n_samples=n, n_shards=n_shards, rows_per_shard=rows_per_shard)
    expected = {k: min(rows_per_shard, n - k * rows_per_shard) for k in range(n_shards)}
    w = ShardWriter(out, m, expected, rows_per_shard, job_name="trainer-test", config_hash="h", code_version="t",
                    write_rejects=False)
    w.add(rows)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("shards") / "job")


def _cfg(shards, out, **over):
    from trainer.config import load_train_config
    base = {"data.shards": [str(shards)], "output_dir": str(out), "optim.max_steps": 24, "checkpoint_every": 12,
            "keep_checkpoints": 5}
    base.update(over)
    return load_train_config("tiny", base)


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    from trainer.train import train
    out = tmp_path_factory.mktemp("run")
    summary = train(_cfg(shards, out), progress=False)
    return out, summary


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _probe_batch(shards):
    from trainer.data import PairStream, batches
    return next(batches(PairStream([str(shards)], holdout_fraction=0.1).samples(32), 4))


# -- training ---------------------------------------------------------------------------------

def test_training_lowers_the_loss(trained):
    out, s = trained
    assert s["steps"] == 24 and s["world"] == 1 and s["ranks_in_sync"]
    # the probe is fixed batches, noise and timesteps: before/after compare like with like
    assert s["probe_loss_after"] < 0.6 * s["probe_loss_before"], s
    assert (out / "final" / "unet" / "config.json").exists()            # diffusers layout
    assert (out / "logs").exists() and any((out / "logs").rglob("events.out.tfevents.*"))


def test_checkpoint_round_trip_gives_identical_outputs(trained, shards, tmp_path):
    from trainer.model import load_edit_model
    from trainer.train import reference_outputs

    out, _ = trained
    batch = _probe_batch(shards)
    a = load_edit_model(out / "final")
    ya = reference_outputs(a, batch)
    a.save(tmp_path / "again")
    yb = reference_outputs(load_edit_model(tmp_path / "again"), batch)
    assert torch_equal(ya, yb)
    assert a.net.unet.config.in_channels == 8 and a.net.unet.config.class_embed_type == "identity"
    assert a.net.tasks.names[:2] == ["local", "remove"]
    # the checkpoint's model holds the EMA weights, not the raw ones of train_state/
    from safetensors.torch import load_file
    raw = load_file(out / "checkpoint-24" / "train_state" / "model.safetensors")
    k = "unet.conv_out.weight"
    assert not torch_equal(raw[k], a.net.state_dict()[k])


def test_resumed_run_ends_where_an_uninterrupted_one_does(trained, shards, tmp_path):
    import shutil

    from trainer.model import load_edit_model
    from trainer.train import train

    out, _ = trained
    shutil.copytree(out / "checkpoint-12", tmp_path / "checkpoint-12")       # as if killed after step 12
    s = train(_cfg(shards, tmp_path), resume=True, progress=False)
    assert s["start_step"] == 12 and s["steps"] == 24
    a, b = load_edit_model(out / "final"), load_edit_model(tmp_path / "final")
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch_equal(sa[k], sb[k]) for k in sa)


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and bool(torch.equal(a, b))


# -- task inversion ---------------------------------------------------------------------------

def test_task_inversion_changes_only_the_new_vector(trained, shards, tmp_path):
    from trainer.model import load_edit_model
    from trainer.train import train

    out, _ = trained
    before = load_edit_model(out / "final")
    cfg = _cfg(shards, tmp_path, **{"model.base": str(out / "final"), "data.tasks": ["sketch"],
                                    "data.max_examples": 4, "optim.max_steps": 12, "optim.lr": 0.05,
                                    "optim.warmup_steps": 0})
    s = train(cfg, invert_task="edges", progress=False)
    after = load_edit_model(tmp_path / "final")
    assert after.net.tasks.names == before.net.tasks.names + ["edges"]
    for name in ("unet", "text_encoder", "vae"):
        sa = getattr(before.net, name, None) or getattr(before, name)
        sb = getattr(after.net, name, None) or getattr(after, name)
        da, db = sa.state_dict(), sb.state_dict()
        assert da.keys() == db.keys() and all(torch_equal(da[k], db[k]) for k in da), name
    ta, tb = before.net.tasks.state_dict(), after.net.tasks.state_dict()
    assert torch_equal(ta["to_token.weight"], tb["to_token.weight"])
    assert torch_equal(ta["table.weight"], tb["table.weight"][:-1])
    assert not torch_equal(tb["table.weight"][-1], ta["table.weight"].mean(0))   # it moved from its start
    assert s["probe_loss_after"] < s["probe_loss_before"], s


# -- data -------------------------------------------------------------------------------------

def test_stream_filters_by_task_and_splits_deterministically(shards):
    from trainer.data import PairStream

    all_train = [r["id"] for r in PairStream([str(shards)], "train", holdout_fraction=0.25).rows()]
    held = [r["id"] for r in PairStream([str(shards)], "heldout", holdout_fraction=0.25).rows()]
    assert held and not set(all_train) & set(held) and len(all_train) + len(held) == 32
    sk = list(PairStream([str(shards)], "train", ["sketch"], 0.25).rows())
    assert sk and {r["task"] for r in sk} == {"sketch"}
    s = PairStream([str(shards)], holdout_fraction=0.25, shuffle_buffer=8, seed=3)
    order = [r["id"] for r in s.shuffled(0)]
    assert order == [r["id"] for r in s.shuffled(0)] and order != [r["id"] for r in s.shuffled(1)]
    assert sorted(order) == sorted(all_train)
    # two workers split one order between them, nothing twice
    w0 = [x["id"] for _, x in zip(range(10), s.samples(32, 0, 2))]
    w1 = [x["id"] for _, x in zip(range(10), s.samples(32, 1, 2))]
    assert len(w0) == len(w1) == 10 and not set(w0) & set(w1)


def test_unreadable_image_is_a_counted_skip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.data import PairStream

    good = encode_png(np.full((32, 32, 3), 100, np.uint8))
    rows = [{"id": f"r{i}", "task": "color", "task_id": 10, "instruction": "brighter", "input_caption": "a",
             "output_caption": "b", "input_image": {"bytes": good if i else b"not a png", "path": "x"},
             "output_image": {"bytes": good, "path": "y"}} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    s = PairStream([str(tmp_path / "part-00000.parquet")], holdout_fraction=0.0)
    got = [x["id"] for _, x in zip(range(2), s.samples(32))]
    assert sorted(got) == ["r1", "r2"] and s.skipped["bad_image"] == 1


# -- model pieces -------------------------------------------------------------------------------

def test_extra_input_channels_start_at_zero():
    import torch

    from pipeline.models.sd import tiny_unet
    from trainer.model import editing_unet_from_text_to_image

    t2i = tiny_unet()
    unet = editing_unet_from_text_to_image(t2i)
    x, img = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 5, 32)
    zero_task = torch.zeros(1, unet.time_embedding.linear_2.out_features)
    with torch.no_grad():
        a = t2i(x, 10, encoder_hidden_states=text).sample
        b = unet(torch.cat([x, img], 1), 10, encoder_hidden_states=text, class_labels=zero_task).sample
    assert torch.allclose(a, b, atol=1e-5)
    # the task vector reaches the timestep embedding (class_embed_type identity survives from_config)
    with torch.no_grad():
        c = unet(torch.cat([x, img], 1), 10, encoder_hidden_states=text, class_labels=zero_task + 1).sample
    assert unet.config.class_embed_type == "identity" and (c - b).abs().mean() > 1e-3


def test_zero_terminal_snr_model_trains_on_velocity(shards):
    import torch

    from trainer.model import build_edit_model
    from trainer.train import diffusion_loss, step_generator

    cfg = _cfg(shards, "unused", **{"model.zero_terminal_snr": True, "model.prediction_type": "v_prediction"})
    em = build_edit_model(cfg)
    assert em.prediction_type == "v_prediction" and float(em.scheduler.alphas_cumprod[-1]) < 1e-6
    b = _probe_batch(shards)
    ids = torch.tensor([em.net.tasks.id_of(t) for t in b["task"]])
    loss = diffusion_loss(em, em.net, b, ids, step_generator(0, 0, 0, 0), 0.05, em.encode_text([""]))
    loss.backward()
    assert torch.isfinite(loss) and em.net.tasks.table.weight.grad is not None


def test_config_errors_name_the_field():
    from pipeline.config import ConfigError
    from trainer.config import load_train_config

    with pytest.raises(ConfigError, match="optim.lr"):
        load_train_config("tiny", {"optim.lr": -1})
    with pytest.raises(ConfigError, match="zero_terminal_snr"):
        load_train_config("tiny", {"model.zero_terminal_snr": True})
    paper = load_train_config("paper")
    assert paper.optim.lr == 2e-5 and paper.optim.warmup_steps == 2000 and paper.optim.max_steps == 50000


# -- editing ------------------------------------------------------------------------------------

def test_thresholding_keeps_small_changes_out_and_takes_big_ones():
    from trainer.edit import threshold_edit

    rng = np.random.default_rng(0)
    prev = rng.integers(40, 200, (64, 64, 3), dtype=np.uint8)
    new = prev.copy()
    # left half: drift of 1–2 levels per channel (L1 over RGB ≤ 6/255 ≈ 0.024 < 0.03)
    new[:, :32] = (prev[:, :32].astype(int) + rng.integers(1, 3, (64, 32, 3))).astype(np.uint8)
    # right half: a real edit, +30 levels (L1 ≈ 0.35)
    new[:, 32:] = prev[:, 32:] + 30
    out = threshold_edit(prev, new, alpha=0.03)
    assert np.array_equal(out[:, :30], prev[:, :30])
    assert np.array_equal(out[:, 34:], new[:, 34:])
    assert np.array_equal(threshold_edit(prev, new, alpha=0.0), new)     # α = 0: thresholding off
    assert np.array_equal(threshold_edit(prev, new, alpha=3.01), prev)   # above the largest L1: keep all


def test_edit_single_and_multi_turn(trained):
    import torch

    from trainer.edit import Editor

    out, _ = trained
    ed = Editor(out / "final")
    img = _photo("coffee")[:40]                                          # not square on purpose
    y, task = ed.edit(img, "please make it brighter", "color", steps=3)
    assert y.shape == img.shape and y.dtype == np.uint8 and task == "color"
    # the task conditions the prediction (after 24 tiny steps the effect is small, so compare floats)
    from trainer.pipeline_emu_edit import task_conditioned_noise
    p = ed.pipe
    x, lat = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        text = p.encode_prompt(["brighter"], "cpu")
        by_task = [task_conditioned_noise(p.unet, p.task_embedding, x, lat, torch.tensor([500]), text,
                                          task_ids=torch.tensor([p.task_embedding.id_of(t)]))
                   for t in ("color", "sketch", "color")]
    assert torch.equal(by_task[0], by_task[2]) and not torch.equal(by_task[0], by_task[1])
    _, predicted = ed.edit(img, "draw the edges of everything as a pencil sketch", steps=2)
    assert predicted in ed.tasks                                         # the real MiniLM predictor
    turns = ed.edit_turns(img, ["brighter", "more contrast"], ["color", "color"], alpha=3.01, steps=2)
    assert all(np.array_equal(t, img) for t, _ in turns)                 # α above every change keeps all
    raw = ed.edit_turns(img, ["brighter"], ["color"], alpha=0.0, steps=2, seed=5)[0][0]
    assert np.array_equal(raw, ed.edit(img, "brighter", "color", steps=2, seed=5)[0])


def test_cli_edit_and_eval(trained, shards, tmp_path, capsys):
    from pipeline.cli import main

    out, _ = trained
    img = tmp_path / "in.png"
    img.write_bytes(encode_png(_photo("rocket")))
    rc = main(["edit", str(img), "please make it darker", "then blur it", "--checkpoint", str(out / "final"),
               "--task", "color", "--steps", "2", "--out", str(tmp_path / "e.png")])
    assert rc == 0 and (tmp_path / "e_1.png").exists() and (tmp_path / "e_2.png").exists()
    rc = main(["eval", "--checkpoint", str(out / "final"), "--shards", str(shards), "--limit", "3", "--steps", "2",
               "--out", str(tmp_path / "eval.json")])
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rc == 0 and rep["rows"] >= 1 and rep["task_accuracy"] == 1.0
    for part in ("model", "dataset_reference"):
        assert all(np.isfinite(rep[part][k]) for k in ("clip_dir", "clip_img", "clip_out", "l1", "dino"))
    assert rep["model"]["l1"] != rep["dataset_reference"]["l1"]
    assert "dataset_reference" in capsys.readouterr().out
    # eval wrote its numbers into the checkpoint's model card
    card = (out / "final" / "README.md").read_text()
    assert f"on {rep['rows']} held-out rows" in card and f"{rep['model']['l1']:.4f}" in card
    assert json.loads((out / "final" / "eval_results.json").read_text())["rows"] == rep["rows"]


# -- the checkpoint as a diffusers pipeline -------------------------------------------------------

FRESH_PROCESS = r"""
import json, sys
import numpy as np, torch, PIL.Image
from diffusers import DiffusionPipeline

final, exported, image, out = sys.argv[1:5]
img = PIL.Image.open(image)
def edit(p):
    p.set_progress_bar_config(disable=True)
    return np.asarray(p(img, "please make it darker", task="color", num_inference_steps=2,
                        generator=torch.Generator().manual_seed(3)).images[0])
kw = dict(trust_remote_code=True)        # diffusers runs a folder's own code only when told to
a = DiffusionPipeline.from_pretrained(final, **kw)                  # model_index.json names the code
b = DiffusionPipeline.from_pretrained(exported, **kw)
c = DiffusionPipeline.from_pretrained(final, custom_pipeline=final + "/pipeline_emu_edit.py", **kw)
EmuEditPipeline = type(a)                                           # the class, as the folder's file defines it
d = EmuEditPipeline.from_pretrained(final, torch_dtype=torch.bfloat16, **kw)   # loads only: bf16 convs crawl on CPUs
mods = sorted(m for m in sys.modules if m.split(".")[0] in ("trainer", "pipeline", "filters", "tasks"))
np.savez(out, a=edit(a), b=edit(b))
print(json.dumps({"classes": [type(p).__name__ for p in (a, b, c, d)], "pairforge_modules": mods,
                  "dtypes": [str(m.dtype) for m in (d.unet, d.vae, d.text_encoder, d.task_embedding)],
                  "tasks": a.tasks}))
"""


def test_checkpoint_loads_as_a_diffusers_pipeline_in_a_fresh_process(trained, tmp_path):
    """``final/`` (and an exported copy) load with diffusers alone, in a process that cannot import
    pairforge, and edit to the very pixels ``pairforge edit`` writes with the same seed."""
    import os
    import subprocess
    import sys

    from pipeline.cli import main
    from pipeline.sources import decode_image

    out, _ = trained
    final = out / "final"
    for ck in (final, out / "checkpoint-12", out / "checkpoint-24"):
        index = json.loads((ck / "model_index.json").read_text())
        assert index["_class_name"] == ["pipeline_emu_edit", "EmuEditPipeline"], ck
        # it edits at the resolution it was trained at (a 32-px model run at 512 px is slow and wrong)
        assert index["resolution"] == json.loads((ck / "trainer.json").read_text())["config"]["model"]["resolution"], ck
        assert (ck / "pipeline_emu_edit.py").exists() and (ck / "README.md").exists()
        # safetensors only (train_state/ is accelerate's resume state, not the model)
        assert not [p for p in ck.glob("*/*.bin") if p.parent.name != "train_state"], ck
        assert list(ck.glob("unet/*.safetensors"))
    img = tmp_path / "in.png"
    img.write_bytes(encode_png(_photo("chelsea")[:44]))
    assert main(["edit", str(img), "please make it darker", "--checkpoint", str(final), "--task", "color",
                 "--steps", "2", "--seed", "3", "--out", str(tmp_path / "cli.png")]) == 0
    cli = decode_image((tmp_path / "cli.png").read_bytes(), max_side=4096)
    assert main(["export-editor", str(final), str(tmp_path / "hub")]) == 0
    assert main(["export-editor", str(final), str(tmp_path / "hub")]) == 2          # no silent overwrite
    assert not (tmp_path / "hub" / "train_state").exists() and (tmp_path / "hub" / "README.md").exists()

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    r = subprocess.run([sys.executable, str(script), str(final), str(tmp_path / "hub"), str(img),
                        str(tmp_path / "got.npz")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["pairforge_modules"] == [], info                   # diffusers and the folder's file only
    assert info["classes"] == ["EmuEditPipeline"] * 4 and info["tasks"][:2] == ["local", "remove"]
    assert info["dtypes"] == ["torch.bfloat16"] * 4
    got = np.load(tmp_path / "got.npz")
    assert got["a"].shape == cli.shape and np.array_equal(got["a"], cli)    # same pixels as `pairforge edit`
    assert np.array_equal(got["b"], cli)                                    # the exported copy too


def test_model_card_states_the_data_and_recipe_used(trained, shards):
    """The card's numbers are those of the run: job, config hash, shards and rows per task (counted
    here independently from the shard files), and the config values the trainer used."""
    import pyarrow.parquet as pq

    from trainer.data import is_heldout, shard_files

    out, _ = trained
    card = (out / "final" / "README.md").read_text()
    train_rows: dict = {}
    for f in shard_files([str(shards)]):
        t = pq.read_table(f, columns=["id", "task"]).to_pylist()
        for r in t:
            if not is_heldout(r["id"], 0.1):                   # tiny.yaml's holdout_fraction
                train_rows[r["task"]] = train_rows.get(r["task"], 0) + 1
    assert set(train_rows) == {"color", "sketch"}
    assert f"| {shards} | trainer-test | h | 4 |" in card
    for task, n in train_rows.items():
        assert f"| {task} | {n} | {(24 if task == 'color' else 8) - n} |" in card
    assert f"{sum(train_rows.values())} training rows from 4 shard files" in card
    assert "AdamW lr 0.001," in card and "cosine decay to step 24" in card and "| steps trained | 24 |" in card
    assert "4 per process × 1 accumulation × 1 processes = 4" in card and "| EMA decay (weights saved) | 0.9 |" in card
    assert "`local`, `remove`, `add`" in card and "## Tasks (16)" in card
    assert "Not evaluated yet" in (out / "checkpoint-12" / "README.md").read_text()
    assert "| steps trained | 12 |" in (out / "checkpoint-12" / "README.md").read_text()


def test_cli_train_filters_tasks_and_reports_bad_ones(shards, tmp_path, capsys):
    from pipeline.cli import main
    from trainer.model import load_edit_model

    rc = main(["train", "--shards", str(shards), "--out", str(tmp_path / "r"), "--tasks", "sketch", "--steps", "3",
               "--no-progress"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["steps"] == 3
    cfg = load_edit_model(tmp_path / "r" / "final").meta["config"]
    assert cfg["data"]["tasks"] == ["sketch"] and cfg["optim"]["max_steps"] == 3
    rc = main(["train", "--shards", str(shards), "--out", str(tmp_path / "x"), "--tasks", "juggling", "--steps", "1"])
    assert rc == 2 and "data.tasks" in capsys.readouterr().err
    rc = main(["train", "--shards", str(shards), "--set", "optim.batch_size=0"])
    assert rc == 2 and "optim.batch_size" in capsys.readouterr().err


def test_rows_of_a_task_without_embedding_are_counted_not_lost(tmp_path, caplog):
    """With data.tasks null ("all"), rows whose task the model has no embedding for cannot be used:
    the summary counts them by task and a warning names them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.data import shard_files
    from trainer.train import train

    job = make_shards(tmp_path / "job", n_color=8, n_sketch=8)
    f = shard_files([str(job)])[0]
    t = pq.read_table(f)
    tasks = t.column("task").to_pylist()
    tasks[:3] = ["juggling"] * 3
    pq.write_table(t.set_column(t.schema.get_field_index("task"), "task", pa.array(tasks, t.schema.field("task").type)), f)
    with caplog.at_level("WARNING", logger="pairforge.train"):
        s = train(_cfg(job, tmp_path / "run", **{"optim.max_steps": 2, "checkpoint_every": 0}), progress=False)
    assert s["rows_without_task_embedding"] == {"juggling": 3} and s["steps"] == 2
    assert "juggling" in caplog.text and "--invert-task" in caplog.text
