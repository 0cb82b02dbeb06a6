#!/usr/bin/env python
"""Build the embedded profile's judge VLM: an Idefics3 (SmolVLM) architecture model whose language
side is the real SmolLM2-135M-Instruct (from ``models/smollm2-135m-instruct``; SmolVLM's own LM is
SmolLM2) and whose vision side (a tiny SigLIP-style ViT and the pixel-shuffle connector) is
random-init from a fixed seed.

Why this stand-in: no pip package ships the weights of a small vision-language model, and the
project downloads nothing from a model hub. Idefics3 is an architecture vLLM serves on CPU whose
module imports without torchvision (vLLM's LLaVA and Qwen2-VL modules import torchvision, which
the vLLM env must not have), and its language model is a plain Llama, which SmolLM2 is. So the
whole judge path runs for real -- images sent as data URLs, vLLM's multimodal processor, the vision
tower's tokens in the prompt, guided JSON decoding, the rubric scores -- while the *judgement*
itself is only as good as a 135M LM that sees random image features: the scores are valid numbers
in the schema's range, not a quality signal. The paper profile names a real VLM instead.

Run with the vLLM env's python (it has torch and transformers)::

    .venv-llm/bin/python deploy/build_judge_vlm.py --lm models/smollm2-135m-instruct \
        --out models/judge-idefics3-smollm2

Deterministic: same seed, same LM folder -> same weights (checked by the sha256 in
``pairforge_source.json``). Written next to the target and renamed into place. Nothing downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_gguf import sha256  # noqa: E402  (the same streamed file hash as the LLM folder's)

IMAGE_TOKEN = "<image>"
IMAGE_TOKENS = ["<fake_token_around_image>", IMAGE_TOKEN, "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
IMAGE_SIZE = 128        # the judge sees 128 px views: 64 patches of 16 px ...
PATCH_SIZE = 16
SCALE_FACTOR = 2        # ... pixel-shuffled 2x2 into 16 tokens per image (cheap prefill on CPU)
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2




def build(lm_dir: Path, out: Path, seed: int) -> dict:
    import torch
    import transformers
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Idefics3Config,
                              Idefics3ForConditionalGeneration, Idefics3Processor)
    from transformers.models.idefics3.image_processing_pil_idefics3 import \
        Idefics3ImageProcessorPil

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    # the tokens Idefics3's processor writes around an image (SmolVLM's tokenizer has them too)
    tok.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS})
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    vocab = len(tok)
    lm.resize_token_embeddings(vocab, mean_resizing=False)   # new rows: seeded normal init
    text_config = lm.config
    text_config.dtype = "bfloat16"
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = Idefics3Config(vision_config=vision, text_config=text_config.to_dict(),
                            image_token_id=image_token_id, scale_factor=SCALE_FACTOR,
                            pad_token_id=text_config.pad_token_id, tie_word_embeddings=True)
    model = Idefics3ForConditionalGeneration(config)
    missing, unexpected = model.model.text_model.load_state_dict(lm.model.state_dict(),
                                                                 strict=False)
    if missing or unexpected:
        sys.exit(f"ERROR: SmolLM2 weights do not fit the Idefics3 language model: "
                 f"missing={missing} unexpected={unexpected}")
    model.lm_head.weight = model.model.text_model.embed_tokens.weight
    model = model.to(torch.bfloat16).eval()

    # one tile per image, no splitting: IMAGE_SEQ_LEN tokens per image keep the prefill cheap
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE})
    chat_template = (lm_dir / "chat_template.jinja").read_text()
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok,
                                  image_seq_len=IMAGE_SEQ_LEN, chat_template=chat_template)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "chat_template.jinja").write_text(chat_template)
    meta = {
        "architecture": "Idefics3ForConditionalGeneration",
        "language_model": str(lm_dir), "language_model_weights": "real (SmolLM2-135M-Instruct)",
        "vision_tower": "random-init SigLIP-style ViT (stand-in: no VLM weights are installable here)",
        "seed": seed, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "image_seq_len": IMAGE_SEQ_LEN,
        "transformers": transformers.__version__, "built_by": "deploy/build_judge_vlm.py",
    }
    meta["weights_sha256"] = sha256(tmp / "model.safetensors")
    (tmp / "pairforge_source.json").write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", default="models/smollm2-135m-instruct",
                    help="folder of the SmolLM2 model (deploy/convert_gguf.py writes it)")
    ap.add_argument("--out", default="models/judge-idefics3-smollm2", help="model folder to write")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random vision tower")
    ap.add_argument("--force", action="store_true", help="rebuild even when --out exists")
    a = ap.parse_args(argv)
    lm, out = Path(a.lm), Path(a.out)
    if not (lm / "model.safetensors").exists():
        sys.exit(f"ERROR: --lm {lm} has no model.safetensors (run deploy/setup_llm_env.sh first)")
    if (out / "model.safetensors").exists() and not a.force:
        print(f"[build_judge_vlm] {out} exists (--force to rebuild)")
        return
    t = time.monotonic()
    meta = build(lm, out, a.seed)
    print(f"[build_judge_vlm] wrote {out} in {time.monotonic() - t:.1f}s "
          f"(sha256 {meta['weights_sha256'][:12]})")


if __name__ == "__main__":
    main()
