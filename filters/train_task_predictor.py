"""Train and measure the fine-tuned MiniLM task predictor (``pairforge task-predictor``).

Training data, all (task, instruction) rows:
  * filters/data/task_instructions/train.jsonl — instructions written the way people ask for edits
    (terse, polite, questions, typos, both directions of the translation tasks), our own writing;
  * the exemplar instructions of every prompt file (prompts/*.yaml);
  * optionally the pipeline's own instructions (``--from OUT``).
filters/data/task_instructions/heldout.jsonl was written separately (other objects, scenes and
phrasings) and is never trained on: it is what the reported accuracy is measured on.

The loop: AdamW on the last two transformer layers and the head, cross-entropy with label smoothing
(the filter acts on the probability, so the model should not learn to say 1.0 about everything),
classes weighted so that every task counts the same, a fixed number of epochs, fixed seeds.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import REPO_ROOT

log = logging.getLogger("pairforge.task_predictor")
DATA_DIR = REPO_ROOT / "filters" / "data" / "task_instructions"
TRAIN_FILE, HELDOUT_FILE = DATA_DIR / "train.jsonl", DATA_DIR / "heldout.jsonl"


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            r = json.loads(line)
            if not isinstance(r.get("task"), str) or not (r.get("instruction") or "").strip():
                raise ValueError(f"{path}:{i}: want {{\"task\": ..., \"instruction\": ...}}, got {line[:80]}")
            rows.append({"task": r["task"], "instruction": r["instruction"].strip()})
    return rows


def exemplar_rows() -> list[dict]:
    """The instructions of every prompt file's exemplars (the depossess prompt has none)."""
    import yaml

    rows = []
    for f in sorted((REPO_ROOT / "prompts").glob("*.yaml")):
        d = yaml.safe_load(f.read_text())
        for e in d.get("exemplars") or []:
            ins = (e.get("answer") or {}).get("instruction")
            if ins:
                rows.append({"task": d["task"], "instruction": ins.strip()})
    return rows


def human_rows() -> list[dict]:
    return read_jsonl(TRAIN_FILE) + exemplar_rows()


def train(rows: list[dict], tasks: list[str] | None = None, *, trainable_layers: int = 2, epochs: int = 10,
          lr: float = 1e-4, head_lr: float = 2e-3, batch_size: int = 32, label_smoothing: float = 0.1,
          seed: int = 0):
    """Fine-tune a MiniLMClassifier on ``rows``; returns it in eval mode."""
    import torch

    from filters.minilm_classifier import MiniLMClassifier

    tasks = tasks or sorted({r["task"] for r in rows})
    if len(tasks) < 2:
        raise ValueError("need instructions of at least two tasks to train a task predictor")
    torch.manual_seed(seed)
    model = MiniLMClassifier(tasks, trainable_layers)
    y = torch.tensor([tasks.index(r["task"]) for r in rows])
    texts = [r["instruction"] for r in rows]
    counts = torch.bincount(y, minlength=len(tasks)).clamp(min=1).float()
    # every task weighs the same whatever its row count (the pipeline draws tasks uniformly)
    loss_fn = torch.nn.CrossEntropyLoss(weight=counts.sum() / (len(tasks) * counts), label_smoothing=label_smoothing)
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": model.head.parameters(), "lr": head_lr}],
                            weight_decay=0.01)
    steps = epochs * ((len(rows) + batch_size - 1) // batch_size)
    t0 = time.time()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    # the frozen layers see each instruction once: their output (real tokens only) is cached, and
    # the epochs run only the trained layers on it
    model.eval()
    cache = []
    for i in range(0, len(texts), 64):
        enc = model.encode(texts[i:i + 64])
        h = model.frozen_part(enc["input_ids"], enc["attention_mask"])
        cache += [h[j, :int(m.sum())] for j, m in enumerate(enc["attention_mask"])]
    log.info("cached the %d frozen layers' output for %d instructions (%.0fs)", model.frozen_layers, len(rows),
             time.time() - t0)
    rng = np.random.default_rng(seed)
    model.train()
    for ep in range(epochs):
        order, total = rng.permutation(len(rows)), 0.0
        for i in range(0, len(rows), batch_size):
            idx = order[i:i + batch_size]
            hidden = torch.nn.utils.rnn.pad_sequence([cache[j] for j in idx], batch_first=True)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(cache[j]), dtype=torch.long) for j in idx],
                                                   batch_first=True)
            loss = loss_fn(model.trained_part(hidden, mask), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info("epoch %d/%d loss %.4f (%.0fs)", ep + 1, epochs, total / len(rows), time.time() - t0)
    return model.eval()


def evaluate(predictor, rows: list[dict]) -> dict:
    """Top-1 accuracy, per-task accuracy, the confusion table and mean confidence of ``predictor``
    (anything with ``predict_proba``) on labelled rows."""
    probs, order = predictor.predict_proba([r["instruction"] for r in rows])
    pred = [order[i] for i in probs.argmax(1)] if len(rows) else []
    truth = [r["task"] for r in rows]
    tasks = sorted(set(truth) | set(pred))
    confusion = {t: dict(Counter(p for p, g in zip(pred, truth) if g == t)) for t in tasks if t in truth}
    wrong = Counter(f"{g}→{p}" for p, g in zip(pred, truth) if p != g)
    conf = probs.max(1) if len(rows) else np.zeros(0)
    ok = np.array([p == g for p, g in zip(pred, truth)])
    return {"n": len(rows), "accuracy": round(float(ok.mean()), 4) if len(rows) else None,
            "per_task": {t: round(float(np.mean([p == t for p, g in zip(pred, truth) if g == t])), 3)
                         for t in sorted(set(truth))},
            "confusion": confusion, "top_confusions": dict(wrong.most_common(10)),
            "mean_confidence_right": round(float(conf[ok].mean()), 3) if ok.any() else None,
            "mean_confidence_wrong": round(float(conf[~ok].mean()), 3) if (~ok).any() else None,
            "wrong_at_0.8": int(((~ok) & (conf >= 0.8)).sum()),
            "errors": [{"task": g, "predicted": p, "p": round(float(c), 3), "instruction": r["instruction"]}
                       for r, g, p, c in zip(rows, truth, pred, conf) if p != g]}


def format_evaluation(rep: dict, title: str = "") -> str:
    """Accuracy, per-task accuracy and the confusion table (rows: true task, columns: predicted)."""
    tasks = list(rep["per_task"])
    cols = sorted({p for row in rep["confusion"].values() for p in row} | set(tasks))
    short = {t: "segmap" if t == "segmentation" else t[:6] for t in cols}   # segment ≠ segmentation
    corner = "true \\ predicted"
    L = [f"{title}{rep['n']} instructions: top-1 accuracy {rep['accuracy']:.1%}; wrong with p ≥ 0.8: "
         f"{rep['wrong_at_0.8']}; mean p when right {rep['mean_confidence_right']}, when wrong "
         f"{rep['mean_confidence_wrong']}", "",
         f"{corner:<16}{'acc':>6} " + " ".join(f"{short[c]:>6}" for c in cols)]
    for t in tasks:
        row = rep["confusion"].get(t, {})
        L.append(f"{t:<16}{rep['per_task'][t]:>6.0%} " + " ".join(f"{row.get(c, 0) or '.':>6}" for c in cols))
    if rep["top_confusions"]:
        L += ["", "top confusions: " + ", ".join(f"{k} ×{v}" for k, v in rep["top_confusions"].items())]
    return "\n".join(L)
