"""The fine-tuned MiniLM task predictor: the shipped model reads human-style instructions (held-out
file ≥ 90% top-1), its weights are checked before use, `pairforge predict-task` prints JSON lines,
and the layer-by-layer forward the trainer relies on is BertModel's forward."""
import io
import json
import shutil

import numpy as np
import pytest

from filters.task_predictor import DEFAULT_PATHS, FineTunedTaskPredictor, _resolve, load_task_predictor
from filters.train_task_predictor import HELDOUT_FILE, evaluate, human_rows, read_jsonl
from pipeline.cli import main

SHIPPED = _resolve(DEFAULT_PATHS["minilm-finetuned"])


@pytest.fixture(scope="module")
def shipped():
    return FineTunedTaskPredictor.load(SHIPPED)


def test_shipped_model_reads_the_heldout_instructions(shipped):
    """The old logistic regression (trained on SmolLM2's instructions) scores 60.8% here."""
    rep = evaluate(shipped, read_jsonl(HELDOUT_FILE))
    assert rep["n"] >= 16 * 20 and len(rep["per_task"]) == 16
    assert rep["accuracy"] >= 0.90, rep["top_confusions"]


def test_heldout_instructions_are_not_in_the_training_data():
    norm = lambda s: " ".join("".join(c if c.isalnum() else " " for c in s.lower()).split())   # noqa: E731
    train = {norm(r["instruction"]) for r in human_rows()}
    assert not [r["instruction"] for r in read_jsonl(HELDOUT_FILE) if norm(r["instruction"]) in train]


def test_predict_task_prints_one_json_line_per_instruction(capsys, monkeypatch):
    assert main(["predict-task", "get rid of the car", "turn this into a pencil sketch"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r) for r in rows] == [{"instruction", "task", "p"}] * 2
    assert [(r["instruction"], r["task"]) for r in rows] == [("get rid of the car", "remove"),
                                                              ("turn this into a pencil sketch", "sketch")]
    assert all(0 < r["p"] <= 1 for r in rows)
    monkeypatch.setattr("sys.stdin", io.StringIO("draw a box around the cat\n\nshow me the depth\n"))
    assert main(["predict-task", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["instruction"], r["task"]) for r in rows] == [("draw a box around the cat", "detect"),
                                                              ("show me the depth", "depth")]


def test_changed_weights_are_refused_by_name(tmp_path):
    bad = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, bad)
    shutil.copy(SHIPPED.with_name(SHIPPED.name + ".sha256"), tmp_path / (SHIPPED.name + ".sha256"))
    FineTunedTaskPredictor.load(bad)                        # an exact copy loads
    data = bytearray(bad.read_bytes())
    data[-100] ^= 1                                         # one bit of one fp16 weight
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{bad.name}.*sha256"):
        FineTunedTaskPredictor.load(bad)
    with pytest.raises(ValueError, match="sha256"):        # a pinned checksum (config sha256) is checked too
        FineTunedTaskPredictor.load(SHIPPED, sha256="0" * 64)
    (tmp_path / (SHIPPED.name + ".sha256")).unlink()
    with pytest.raises(FileNotFoundError, match="no checksum"):
        FineTunedTaskPredictor.load(bad)


def test_probabilities_do_not_depend_on_the_batch(shipped):
    ins = ["pls remove the bin", "Could you make the whole street look like winter?", "edges only",
           "turn this depth map into a photo of a harbour", "mask the kayak"]
    together, _ = shipped.predict_proba(ins)
    alone = np.concatenate([shipped.predict_proba([x])[0] for x in ins])
    assert np.array_equal(together, alone)
    assert np.allclose(together.sum(1), 1.0)


def test_layer_by_layer_forward_is_bert_forward(shipped):
    """The trainer caches the frozen layers' output and runs the layers one by one with its own
    padding mask; on a padded batch that must be what BertModel.forward computes."""
    import torch

    m = shipped.model
    enc = m.encode(["brighter", "put a small red canoe on the lake by the pier please"])
    with torch.no_grad():
        ref = m.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mine = m.run_layers(m.encoder.embeddings(input_ids=enc["input_ids"]), enc["attention_mask"], 0, 6)
    real = enc["attention_mask"].bool()
    assert torch.allclose(ref[real], mine[real], atol=1e-4)


def test_older_logreg_model_still_loads_by_its_file():
    p, order = load_task_predictor(DEFAULT_PATHS["minilm-logreg"]).predict_proba(["remove the dog"])
    assert p.shape == (1, 16) and len(order) == 16


def test_trainer_learns_and_the_saved_file_holds_only_the_trained_layers(tmp_path):
    from filters.minilm_classifier import MiniLMClassifier
    from filters.train_task_predictor import train

    rows = [{"task": "remove", "instruction": t} for t in ("remove the dog", "erase the car", "get rid of the lamp",
                                                           "delete the man", "take the cup away", "lose the hat")]
    rows += [{"task": "color", "instruction": t} for t in ("make it brighter", "more contrast", "blur it",
                                                           "black and white", "boost saturation", "darker pls")]
    model = train(rows, trainable_layers=1, epochs=6, lr=5e-4, head_lr=5e-3, batch_size=4)
    digest = model.save(tmp_path / "tp.safetensors")
    (tmp_path / "tp.safetensors.sha256").write_text(digest + "\n")
    loaded = FineTunedTaskPredictor.load(tmp_path / "tp.safetensors")
    pred = FineTunedTaskPredictor(model)
    texts = ["erase the tree", "make it a bit brighter"]
    p, order = pred.predict_proba(texts)
    assert [order[i] for i in p.argmax(1)] == ["remove", "color"]
    assert np.allclose(loaded.predict_proba(texts)[0], p, atol=5e-3)     # int8 deltas: close, not equal
    # one layer of six: its int8 change (1.77 M weights) and the small fp32 tensors, not the 90 MB model
    assert (tmp_path / "tp.safetensors").stat().st_size < 2.2e6
    assert isinstance(loaded.model, MiniLMClassifier) and loaded.model.trainable_layers == 1
