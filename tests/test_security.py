"""Security basics: what the job starts listens on 127.0.0.1 only; no model file is unpickled
(a checkpoint whose pickle would run code fails to load, and the code does not run); every string
from the data is escaped in the HTML report; an output folder and its source are kept apart."""
from __future__ import annotations

import ast
import glob
import html.parser
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.jobutil import ROOT, run_cli, write_job

# ============================================================== 1. listeners on 127.0.0.1 only


def listeners() -> list[tuple[str, int, str]]:
    """(address, port, socket inode) of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out = []
    for f, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            p = line.split()
            if p[3] != "0A":                    # TCP_LISTEN
                continue
            ip, port = p[1].split(":")
            raw = bytes.fromhex(ip)
            if v6:
                addr = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            else:
                addr = socket.inet_ntoa(struct.pack("<I", int(ip, 16)))
            out.append((addr, int(port, 16), p[9]))
    return out


def loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1" or addr.startswith("::ffff:127.")


def _pids() -> list[int]:
    return [int(d[6:]) for d in glob.glob("/proc/[0-9]*")]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it."""
    parent = {pid: int(s[1]) for pid in _pids() if (s := _stat(pid))}
    tree = {root}
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def socket_owners(pids: set[int]) -> dict[str, int]:
    """socket inode → pid, for the open sockets of ``pids``."""
    owners = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if t.startswith("socket:["):
                    owners[t[8:-1]] = pid
        except OSError:
            continue
    return owners


def listeners_of(pids: set[int]) -> list[tuple[str, int, int]]:
    own = socket_owners(pids)
    return [(a, p, own[ino]) for a, p, ino in listeners() if ino in own]


def test_launched_vllm_server_listens_on_loopback_only(vllm_url):
    """The real server the session fixture launched (VLLMServer's defaults, as a job launches it):
    its port only on 127.0.0.1, and no socket of its processes on another address either."""
    port = urlsplit(vllm_url).port
    on_port = [(a, ino) for a, p, ino in listeners() if p == port]
    assert on_port, f"nothing listens on {port}"
    assert all(loopback(a) for a, _ in on_port), on_port
    assert not any(a in ("0.0.0.0", "::") for a, _ in on_port)
    owner = socket_owners(set(_pids()))[on_port[0][1]]
    pgid = os.getpgid(owner)                        # the server runs in its own session
    group = {pid for pid in _pids() if (s := _stat(pid)) and int(s[2]) == pgid}
    socks = listeners_of(group)
    assert socks and all(loopback(a) for a, _, _ in socks), socks


def test_vllm_server_defaults_to_loopback():
    from pipeline.llm.server import VLLMServer
    cmd = VLLMServer(python="/x/python", model_dir="/x/m", served_name="m", log_path="/tmp/x.log", port=1).command()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


RAY_PROBE = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from pipeline.config import load_job
from pipeline.runner import init_ray
from tests.test_security import listeners_of, process_tree
init_ray(load_job(sys.argv[1]), {"color"})
import ray
ray.get(ray.remote(lambda: 1).remote())         # a worker process is up too
import time; time.sleep(1)
print(json.dumps({"listeners": listeners_of(process_tree(os.getpid())),
                  "node_ip": ray.util.get_node_ip_address(),
                  "env_after": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}))
ray.shutdown()
"""


def test_embedded_ray_listens_on_loopback_only(tmp_path):
    """`init_ray` without an address starts GCS, raylet, object manager, agents and workers: every
    socket they listen on is bound to 127.0.0.1 (Ray's default binds its gRPC servers to all
    interfaces and its agents to the machine's network address)."""
    job = write_job(tmp_path / "job.yaml", "http://127.0.0.1:9/v1")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    p = subprocess.run([sys.executable, "-c", RAY_PROBE, str(job), str(ROOT)], capture_output=True, text=True,
                       timeout=300, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(r["listeners"]) >= 3, r                # GCS, raylet, object manager at least
    wide = [x for x in r["listeners"] if not loopback(x[0])]
    assert not wide, f"Ray listens beyond 127.0.0.1: {wide}"
    assert r["node_ip"] == "127.0.0.1"
    assert r["env_after"] is None                     # the switch is not left in the driver's environment


@pytest.mark.parametrize("how", ["config", "env"])
def test_joining_a_cluster_is_unchanged(monkeypatch, how):
    """With ray.address (or RAY_ADDRESS) init_ray joins that cluster as before: no loopback node
    address, no single-machine switch."""
    import ray
    from ray._private import ray_constants

    from pipeline.config import JobConfig
    from pipeline.runner import init_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(
        (kw, os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), ray_constants.ENABLE_RAY_CLUSTER)))
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    cfg = JobConfig()
    if how == "config":
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        cfg.ray.address = "ray://head:10001"
    else:
        monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    init_ray(cfg)
    (kw, env, flag), = calls
    assert "_node_ip_address" not in kw and env is None and flag is True
    assert kw["address"] == ("ray://head:10001" if how == "config" else None)

    calls.clear()                                     # embedded: the switch is on only during ray.init
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(JobConfig(), {"color"})
    (kw, env, flag), = calls
    assert kw["_node_ip_address"] == "127.0.0.1" and env == "0" and flag is False
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER is True


# ============================================================== 2. no model file is unpickled


class _Payload:
    """Pickles to `exec(code)`: what a hostile checkpoint does. Loading it must not run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the pickle ran')",))


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PICKLE_RAN"
    yield m
    assert not m.exists(), "a loader ran the checkpoint's pickle"


def _armed(path: Path, marker: Path, load) -> None:
    """The file really runs code when loaded unsafely (else the tests below would prove nothing)."""
    try:
        load(path)
    except Exception:
        pass
    assert marker.exists()
    marker.unlink()


def _torch_payload(path: Path, marker: Path, wrap=lambda p: {"model": p}) -> Path:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(_Payload(marker)), path)
    return path


def test_the_payload_is_armed(tmp_path):
    import torch
    m = tmp_path / "ran"
    _armed(_torch_payload(tmp_path / "x.pth", m), m, lambda p: torch.load(p, weights_only=False))


def test_segment_anything_checkpoint_is_not_unpickled(tmp_path, marker):
    from pipeline.grounding.config import GroundingConfig
    from pipeline.grounding.segmenter import build_segmenter
    ck = _torch_payload(tmp_path / "sam_tiny_evil.pth", marker, wrap=lambda p: {"image_encoder.x": p})
    with pytest.raises(Exception, match="(?i)unpickl|weights only"):
        build_segmenter(str(ck), GroundingConfig())          # auto: .pth → segment-anything


needs_gdino = pytest.mark.skipif(
    __import__("importlib").util.find_spec("groundingdino") is None and not os.environ.get("CI"),
    reason="groundingdino-py not installed")


@needs_gdino
def test_groundingdino_checkpoint_is_not_unpickled_and_says_how_to_convert(tmp_path, marker):
    from pipeline.grounding.config import GroundingConfig
    from pipeline.grounding.detector import build_detector
    from pipeline.grounding.detector_gdino import tiny_files
    config_py, bert = tiny_files()
    g = GroundingConfig(detector_config=config_py, text_encoder_dir=bert, detector_image_size=96)
    ck = _torch_payload(tmp_path / "groundingdino_swint_evil.pth", marker,
                        wrap=lambda p: {"model": {}, "args": p})
    with pytest.raises(ValueError, match="pickles more than tensors") as e:
        build_detector(str(ck), g)
    assert "safetensors" in str(e.value) and "it would call exec" in str(e.value)


@needs_gdino
def test_groundingdino_released_layout_and_safetensors_load(tmp_path):
    """What the allowlist is for: {"model", "args": argparse.Namespace, "epoch"} loads with
    weights_only=True; the same weights as .safetensors load too, with the same detections."""
    import argparse

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pipeline.grounding.config import GroundingConfig
    from pipeline.grounding.detector import build_detector
    from pipeline.grounding.detector_gdino import tiny_files
    tiny = build_detector("tiny-random", GroundingConfig(detector_backend="groundingdino"))
    sd = tiny.model.state_dict()
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3,
                "args": argparse.Namespace(lr=1e-4, backbone="swin_T_224_1k", dn_labelbook_size=91)},
               tmp_path / "groundingdino_tiny.pth")
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, tmp_path / "groundingdino_tiny.safetensors")
    config_py, bert = tiny_files()
    g = GroundingConfig(detector_config=config_py, text_encoder_dir=bert, detector_image_size=96)
    img = [np.full((64, 64, 3), 128, np.uint8)]
    want = tiny.detect(img, ["a cat"])
    for name in ("groundingdino_tiny.pth", "groundingdino_tiny.safetensors"):
        d = build_detector(str(tmp_path / name), g)
        assert type(d).__name__ == "GroundingDinoPyDetector"
        got = d.detect(img, ["a cat"])
        assert [[x.phrase for x in b] for b in got] == [[x.phrase for x in b] for b in want]


def test_easyocr_weights_are_not_unpickled(tmp_path, marker, monkeypatch):
    """EasyOCR itself calls torch.load(weights_only=False) on text.ocr_model_dir's files. It first
    compares their MD5 with its pinned ones (that alone refuses this file); with a file that passes
    that check (MD5 is weak; a future EasyOCR may drop it) the reader still reads tensors only."""
    easyocr_en_models = pytest.importorskip("easyocr_en_models")
    import easyocr.easyocr as E

    from pipeline.text.ocr import REQUIRED_FILES, OcrReader
    d = tmp_path / "ocr"
    for f in REQUIRED_FILES:
        _torch_payload(d / f, marker, wrap=lambda p: {"conv.weight": p})
    with pytest.raises(FileNotFoundError, match="MD5 mismatch"):
        OcrReader(model_dir=str(d))
    real = {f: E.calculate_md5(os.path.join(easyocr_en_models.model_dir(), f)) for f in REQUIRED_FILES}
    monkeypatch.setattr(E, "calculate_md5", lambda p: real[os.path.basename(p)])
    with pytest.raises(Exception, match="(?i)unpickl|weights only"):
        OcrReader(model_dir=str(d))


def test_easyocr_real_weights_still_load():
    pytest.importorskip("easyocr_en_models")
    import numpy as np

    from pipeline.text.ocr import OcrReader
    r = OcrReader()
    assert r.read(np.full((32, 96, 3), 255, np.uint8)) == []


def test_trainer_resume_does_not_unpickle_registered_state(tmp_path, marker):
    """`pairforge train --resume`: accelerate reads registered objects (lr schedule, EMA) with
    weights_only=False; load_train_state reads them with weights_only=True."""
    import torch
    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from trainer.train import load_train_state

    acc = Accelerator(cpu=True)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, 2, 10)
    net, opt = acc.prepare(net, opt)
    acc.register_for_checkpointing(sched)
    for _ in range(3):
        opt.step()
        sched.step()
    d = tmp_path / "train_state"
    acc.save_state(str(d))
    for _ in range(2):
        sched.step()
    load_train_state(acc, d)                          # a real checkpoint loads, state restored
    assert sched.last_epoch == 3
    _torch_payload(d / "custom_checkpoint_0.pkl", marker, wrap=lambda p: {"last_epoch": p})
    _armed(d / "custom_checkpoint_0.pkl", marker, lambda p: acc.load_state(str(d)))    # accelerate alone runs it
    with pytest.raises(Exception, match="(?i)unpickl|weights only"):
        load_train_state(acc, d)


def test_transformers_and_diffusers_bin_weights_are_not_unpickled(tmp_path, marker):
    """Hub ids / folders (CLIP, DINO, DPT, SD, the trainer's checkpoints) load through
    from_pretrained: a folder with only a pickled .bin must fail without running it."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    te = tmp_path / "text_encoder"
    CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                   vocab_size=32, max_position_embeddings=8).save_pretrained(te)
    _torch_payload(te / "pytorch_model.bin", marker, wrap=lambda p: {"text_model.x": p})
    with pytest.raises(Exception):
        CLIPTextModel.from_pretrained(te)
    vae = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2).save_config(vae)
    _torch_payload(vae / "diffusion_pytorch_model.bin", marker, wrap=lambda p: {"encoder.x": p})
    with pytest.raises(Exception):
        AutoencoderKL.from_pretrained(vae)


def test_task_predictor_weights_are_not_unpickled(tmp_path, marker):
    import numpy as np

    from filters.task_predictor import MiniLMTaskPredictor
    p = tmp_path / "tp.npz"
    np.savez(p, coef=np.array([_Payload(marker)], dtype=object), intercept=np.zeros(1), tasks=np.array(["color"]))
    _armed(p, marker, lambda f: np.load(f, allow_pickle=True)["coef"])
    with pytest.raises(ValueError, match="allow_pickle"):
        MiniLMTaskPredictor.load(p)


SCANNED = ("pipeline", "filters", "trainer", "tasks", "deploy")
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("cPickle", "load"),
              ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"),
              ("cloudpickle", "loads"), ("joblib", "load"), ("marshal", "load"), ("marshal", "loads"),
              ("shelve", "open"), ("pd", "read_pickle"), ("pandas", "read_pickle")}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _const(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls in ``source`` that may unpickle a file: torch.load without weights_only=True, any
    pickle-family load, np.load(allow_pickle=True), weights_only=False anywhere,
    from_pretrained(use_safetensors=False / trust_remote_code=True)."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "cloudpickle", "joblib"):
            for a in node.names:
                if a.name in ("load", "loads", "Unpickler"):
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"{filename}:{node.lineno}: {name}"
        parts = tuple(name.split("."))
        if name in ("torch.load", "th.load") and _const(node, "weights_only") is not True:
            found.append(f"{where} without weights_only=True")
        if parts[-2:] in UNPICKLERS:
            found.append(f"{where} (unpickles)")
        if parts[-1] == "load" and parts[0] in ("np", "numpy") and _const(node, "allow_pickle") not in (None, False):
            found.append(f"{where} with allow_pickle")
        if _const(node, "weights_only") is False:
            found.append(f"{where} with weights_only=False")
        if parts[-1] == "from_pretrained" and (_const(node, "use_safetensors") is False
                                               or _const(node, "trust_remote_code") not in (None, False)):
            found.append(f"{where} allows pickles or remote code")
    return found


def test_static_no_unpickling_loads_in_the_repo():
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 50
    found = [f for p in files for f in unsafe_loads(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


def test_static_check_catches_each_pattern():
    bad = ["torch.load(p)", "torch.load(p, weights_only=False)", "torch.load(p, weights_only=flag)",
           "pickle.load(f)", "pickle.loads(b)", "joblib.load(p)", "np.load(p, allow_pickle=True)",
           "from torch import load", "M.from_pretrained(p, trust_remote_code=True)",
           "M.from_pretrained(p, use_safetensors=False)", "acc.load(p, weights_only=False)"]
    for src in bad:
        assert unsafe_loads(src), src
    for src in ["torch.load(p, map_location='cpu', weights_only=True)", "np.load(p)",
                "np.load(p, allow_pickle=False)", "json.load(f)", "M.from_pretrained(p)"]:
        assert not unsafe_loads(src), src


# ============================================================== 3. the HTML report escapes the data

PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</script>"]
EVIL = "".join(PAYLOADS)


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self._in_script = [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _evil_output(root: Path) -> Path:
    """A committed output whose every user string carries the payloads: instructions, captions,
    reject reasons and details, task names, the LLM model name, the job name and the folder's path."""
    from pipeline.schema import reject
    from pipeline.shards import Manifest, ShardWriter
    from tests.test_shards import _rows

    out = root / ("out" + EVIL) / "x"
    out.mkdir(parents=True)
    rows = _rows(8)
    for i, r in enumerate(rows):
        r["caption"] = f"caption {i} {EVIL}"
        r["answer"] = json.dumps({"instruction": f"instruction {i} {EVIL}", "output_caption": f"out {i} {EVIL}"})
        r["llm"] = json.dumps({"backend": "vllm-openai", "model": "model" + EVIL, "exemplar_ids": ["a"]})
        r["task"] = "color" if i % 2 else "color" + EVIL
        if i % 4 == 3:
            r.update(status="accepted", reject_stage=None, reject_reason=None, reject_detail=None)
            reject(r, "filter" + EVIL, "reason" + EVIL, "detail " + EVIL)
    m = Manifest(out)
    m.init(config_hash="h", job_name="job" + EVIL, n_samples=8, n_shards=2, rows_per_shard=4)
    w = ShardWriter(out, m, {0: 4, 1: 4}, 4, job_name="job" + EVIL, config_hash="h", code_version="v",
                    write_rejects=True)
    w.add(rows)
    assert m.complete
    return out


def test_html_report_escapes_every_user_string(tmp_path):
    from pipeline.report_html import write_html
    from pipeline.stats import compute_stats
    out = _evil_output(tmp_path)
    page = write_html(out, tmp_path / "r.html").read_text(encoding="utf-8")
    for p in PAYLOADS[:2]:
        assert p not in page, p
    assert "<img src=x" not in page
    assert page.count("</script>") == 1 and page.count("<script") == 1     # only the page's own JSON block
    # the data is shown (escaped), not dropped
    assert "instruction 0 &lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert html.unescape(EVIL) == EVIL and html.escape(str(out)) in page
    assert html.escape("reason" + EVIL) in page and html.escape("color" + EVIL) in page

    t = _Tags()
    t.feed(page)
    tags = {name for name, _ in t.tags}
    assert tags <= {"html", "head", "body", "meta", "title", "style", "h1", "h2", "h3", "p", "pre", "div", "span",
                    "nav", "a", "b", "img", "br", "code", "table", "tr", "th", "td", "script",
                    "svg", "rect", "line", "text"}, tags          # inline SVG charts: shapes and labels only
    for name, attrs in t.tags:
        assert not any(a.startswith("on") for a in attrs), (name, attrs)
        if name == "img":
            assert attrs["src"].startswith("data:image/jpeg;base64,")
        if name == "script":
            assert attrs == {"type": "application/json", "id": "stats"}
        if name == "a":                                # links stay inside the page (reason → examples)
            assert attrs["href"].startswith("#") and set(attrs) == {"href"}
    (block,) = t.scripts                               # the JSON holds the data, unchanged
    data = json.loads(block)
    from pipeline.report_html import BINS
    want = json.loads(json.dumps(compute_stats(out, bins=BINS)))
    assert data == want and data["job_name"] == "job" + EVIL
    run_cli("stats", str(out), "--html", str(tmp_path / "cli.html"))       # what `pairforge stats --html` writes
    assert (tmp_path / "cli.html").read_text(encoding="utf-8") == page


# ============================================================== 4. output and source apart


@pytest.mark.parametrize("source, output", [
    ("{d}/imgs", "{d}/imgs/out"),                      # output inside the source
    ("{d}/imgs", "{d}/imgs/a/../out/"),
    ("{d}/imgs/", "{d}/imgs"),                         # the same folder
    ("{d}/out/caps.jsonl", "{d}/out"),                 # the source inside the output
    ("{d}/out/sub/imgs", "{d}/out/"),
    ("{d}/link", "{d}/imgs/out"),                      # through a symlink to the source
    ("{d}/imgs", "{d}/link/out"),
    ("s3://bkt/src?endpoint_override=127.0.0.1:9000&scheme=http", "s3://bkt/src/out?endpoint_override=127.0.0.1:9000"),
    ("s3://bkt/data/out/caps.jsonl", "s3://bkt/data/out"),
    ("s3://bkt/src", "s3://bkt//src/x/.."),
    ("file://{d}/imgs", "{d}/imgs/out"),
])
def test_output_and_source_overlapping_are_refused(tmp_path, source, output):
    from pipeline.config import JobError
    from pipeline.storage import check_apart
    (tmp_path / "imgs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "imgs")
    s, o = source.format(d=tmp_path), output.format(d=tmp_path)
    with pytest.raises(JobError) as e:
        check_apart(s, o)
    assert "source.path" in str(e.value) and "output.path" in str(e.value)
    assert s in str(e.value) and o in str(e.value)


@pytest.mark.parametrize("source, output", [
    ("{d}/imgs", "{d}/imgs2"),                         # a sibling with a common prefix
    ("{d}/imgs2", "{d}/imgs"),
    ("{d}/imgs", "{d}/out"),
    ("{d}/caps.jsonl", "{d}/out"),                     # a file beside the output
    ("s3://bkt/src", "s3://bkt/src2/out"),
    ("s3://bkt/src", "s3://other/src/out"),
    ("s3://bkt/src?endpoint_override=a:1", "s3://bkt/src/out?endpoint_override=b:2"),    # two stores
    ("{d}/imgs", "s3://bkt{d}/imgs/out"),
    (None, "{d}/out"),                                 # the demo source has no path
])
def test_output_and_source_apart_are_allowed(tmp_path, source, output):
    from pipeline.storage import check_apart
    check_apart(source and source.format(d=tmp_path), output.format(d=tmp_path))


def test_run_refuses_an_output_inside_its_source_before_writing(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(b"png")
    out = imgs / "out"
    job = write_job(tmp_path / "job.yaml", "http://127.0.0.1:9/v1", source={"kind": "images", "path": str(imgs)},
                    output__path=str(out))
    p = run_cli("run", str(job), "--no-progress", "-q", check=False, timeout=300)
    assert p.returncode != 0
    assert "output.path" in p.stderr and "source.path" in p.stderr and str(out) in p.stderr, p.stderr[-2000:]
    assert not out.exists() and sorted(x.name for x in imgs.iterdir()) == ["a.png"]

    # the other way round, through --out: a captions file inside the output folder
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "caps.txt").write_text("a red car\n")
    job2 = write_job(tmp_path / "job2.yaml", "http://127.0.0.1:9/v1",
                     source={"kind": "captions", "path": str(out2 / "caps.txt")})
    p = run_cli("run", str(job2), "--out", str(out2), "--no-progress", "-q", check=False, timeout=300)
    assert p.returncode != 0 and "is inside output.path" in p.stderr, p.stderr[-2000:]
    assert sorted(x.name for x in out2.iterdir()) == ["caps.txt"]
