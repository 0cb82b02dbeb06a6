"""The model card (``README.md``) of a trained editor, and the data facts it is written from.

Every number on the card is read from the checkpoint: ``trainer.json`` (the config the trainer
used, its step, and ``data`` — what ``describe_data`` recorded about the shards the trainer read),
``task_embedding/config.json`` (the tasks) and, once ``pairforge eval`` has run on the checkpoint,
``eval_results.json``. The card is rewritten whenever one of them changes.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainer.data import PairStream

EVAL_FILE = "eval_results.json"


def describe_data(stream: PairStream, tasks_filter: list[str] | None = None) -> dict:
    """What a training run consumes: each source's job (name, config hash, shard count from its
    manifest) and the rows per task of the training and held-out splits under the run's filters.
    ``tasks_filter``: the tasks the user asked for (None: all), as the card reports it."""
    sources = []
    for s in stream.sources:
        p = Path(s)
        entry: dict = {"path": str(p)}
        manifest = p / "manifest.json" if p.is_dir() else None
        if manifest is not None and manifest.exists():
            m = json.loads(manifest.read_text())
            entry.update(job_name=m.get("job_name"), config_hash=m.get("config_hash"), n_shards=m.get("n_shards"))
        sources.append(entry)
    counts = stream.split_counts()
    return {"sources": sources, "shard_files": len(stream.files), "tasks_filter": tasks_filter,
            "max_examples": stream.max_examples, "holdout_fraction": stream.holdout_fraction,
            "train_rows_per_task": dict(sorted(counts["train"].items())), "train_rows": sum(counts["train"].values()),
            "heldout_rows_per_task": dict(sorted(counts["heldout"].items())),
            "heldout_rows": sum(counts["heldout"].values())}


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def render_model_card(meta: dict, task_names: list[str], eval_report: dict | None = None) -> str:
    cfg = meta.get("config") or {}
    model, optim, data = cfg.get("model") or {}, cfg.get("optim") or {}, meta.get("data") or {}
    world = meta.get("world", 1)
    lines = ["---", "library_name: diffusers", "pipeline_tag: image-to-image",
             "tags: [image-editing, instruction-editing, emu-edit, pairforge]", "---", "",
             "# Emu-Edit-style instruction editor (pairforge)", "",
             "Trained with `pairforge train`. Load it with diffusers alone:", "", "```python",
             "from diffusers import DiffusionPipeline",
             "pipe = DiffusionPipeline.from_pretrained(\"THIS_FOLDER_OR_HUB_ID\", trust_remote_code=True)",
             "edited = pipe(image, \"make it look like winter\", task=\"global\").images[0]", "```", "",
             "`task` picks the task embedding; without it pairforge's task predictor chooses (installed "
             "pairforge needed), or set `pipe.task_predictor`. Guidance: `image_guidance_scale` (γ_I, default "
             "1.5), `guidance_scale` (γ_T, default 5.0). Multi-turn with sequential-edit thresholding: "
             "`pipe.edit_turns(image, [instruction, ...])`.", "",
             f"## Tasks ({len(task_names)})", "", ", ".join(f"`{t}`" for t in task_names), ""]
    if meta.get("inverted_task"):
        lines += [f"`{meta['inverted_task']}` was learnt by task inversion (every other weight frozen).", ""]
    lines += ["## Training data", ""]
    if data:
        lines += _table(["source", "job", "config hash", "shards"],
                        [[s["path"], s.get("job_name", "?"), s.get("config_hash", "?"), s.get("n_shards", "?")]
                         for s in data.get("sources", [])])
        lines += ["", f"{data.get('train_rows')} training rows from {data.get('shard_files')} shard files "
                  f"(task filter: {data.get('tasks_filter') or 'all'}; max examples: "
                  f"{data.get('max_examples') or 'all'}); {data.get('heldout_rows')} rows held out for eval "
                  f"(holdout fraction {data.get('holdout_fraction')}).", ""]
        tasks = sorted(set(data.get("train_rows_per_task", {})) | set(data.get("heldout_rows_per_task", {})))
        lines += _table(["task", "train rows", "held-out rows"],
                        [[t, data["train_rows_per_task"].get(t, 0), data["heldout_rows_per_task"].get(t, 0)]
                         for t in tasks])
    else:
        lines += ["(not recorded: this checkpoint predates data recording)"]
    lines += ["", "## Training recipe", ""]
    batch = optim.get("batch_size")
    recipe = [
        ("base weights", model.get("base")), ("resolution", model.get("resolution")),
        ("prediction type", model.get("prediction_type")), ("zero terminal SNR", model.get("zero_terminal_snr")),
        ("optimizer", f"AdamW lr {optim.get('lr')}, betas {optim.get('betas')}, eps {optim.get('eps')}, "
                      f"weight decay {optim.get('weight_decay')}"),
        ("schedule", f"{optim.get('warmup_steps')} linear warm-up steps, cosine decay to step {optim.get('max_steps')}"),
        ("steps trained", meta.get("step")),
        ("batch", f"{batch} per process × {optim.get('grad_accum')} accumulation × {world} processes = "
                  f"{(batch or 0) * (optim.get('grad_accum') or 0) * world}"),
        ("conditioning dropout", cfg.get("cond_dropout")), ("EMA decay (weights saved)", cfg.get("ema_decay")),
        ("mixed precision", cfg.get("mixed_precision")), ("seed", cfg.get("seed")),
    ]
    lines += _table(["setting", "value"], [[k, v] for k, v in recipe])
    lines += ["", "The full resolved config is `config` in `trainer.json`.", "", "## Evaluation", ""]
    if eval_report:
        st = eval_report.get("settings", {})
        lines += [f"`pairforge eval` on {eval_report['rows']} held-out rows ({eval_report['task_source']} task, "
                  f"task accuracy {eval_report['task_accuracy']:.1%}; {st.get('steps')} steps, γ_I "
                  f"{st.get('image_guidance')}, γ_T {st.get('text_guidance')}; CLIP `{st.get('clip')}`, "
                  f"DINO `{st.get('dino')}`):", ""]
        keys = ("clip_dir", "clip_img", "clip_out", "l1", "dino")
        rows = [[name] + [f"{eval_report[part].get(k, float('nan')):.4f}" for k in keys]
                for name, part in (("this model", "model"), ("dataset pairs", "dataset_reference"))]
        lines += _table(["", *keys], rows)
    else:
        lines += ["Not evaluated yet (`pairforge eval --checkpoint THIS_FOLDER --shards ...` fills this in)."]
    lines += ["", "Card written by pairforge from this checkpoint's own records.", ""]
    return "\n".join(lines)


def write_model_card(path: str | Path) -> Path:
    path = Path(path)
    meta = json.loads((path / "trainer.json").read_text()) if (path / "trainer.json").exists() else {}
    names = json.loads((path / "task_embedding" / "config.json").read_text())["names"]
    ev = json.loads((path / EVAL_FILE).read_text()) if (path / EVAL_FILE).exists() else None
    card = path / "README.md"
    card.write_text(render_model_card(meta, names, ev))
    return card


def record_eval(path: str | Path, report: dict) -> Path:
    """``pairforge eval``'s report kept in the checkpoint, and the card rewritten with it."""
    path = Path(path)
    (path / EVAL_FILE).write_text(json.dumps(report, indent=1))
    return write_model_card(path)
