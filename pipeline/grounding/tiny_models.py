"""``tiny-random`` detectors and segmenters: the real classes of each library, built from small
configs with seeded random weights (no download, a few MB, milliseconds per image on a CPU).

They detect garbage, but they run every line of the production code: preprocessing, batching,
token-to-phrase mapping, thresholds, mask postprocessing. Their box scores mostly lie in 0.5-1.0
(sigmoid of random logits), so Grounding DINO's default thresholds (0.35 / 0.25) let boxes through;
``box_threshold: 1.0`` detects nothing.

Sizes: detectors see 96x96 letterboxed images; SAMs work at 64x64 (their ``image_size``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pipeline.models.tiny import seeded, tiny_tokenizer

SEED_GDINO_HF, SEED_SAM_HF, SEED_SAM_SA, SEED_GDINO_PY, SEED_BERT = 4101, 4102, 4103, 4104, 4105
SAM_SIZE = 64
HIDDEN = 32
MAX_TEXT_LEN = 64


def tiny_hf_grounding_dino():
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

    backbone = SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=tiny_tokenizer().vocab_size, hidden_size=HIDDEN, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=MAX_TEXT_LEN)
    # two decoder layers: transformers ties the box heads of layers 1.. to layer 0's, so one breaks it
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, use_timm_backbone=False, d_model=HIDDEN,
                              encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                              encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=30, num_feature_levels=4,
                              encoder_n_points=2, decoder_n_points=2, max_text_len=MAX_TEXT_LEN)
    with seeded(SEED_GDINO_HF):
        return GroundingDinoForObjectDetection(cfg).eval()


def tiny_hf_sam():
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    vision = SamVisionConfig(hidden_size=HIDDEN, output_channels=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                             image_size=SAM_SIZE, patch_size=8, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=HIDDEN // 2, mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=HIDDEN, image_size=SAM_SIZE, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=HIDDEN, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_depth=2, iou_head_hidden_dim=HIDDEN)
    with seeded(SEED_SAM_HF):
        model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    return model.eval()


def tiny_sa_sam():
    """segment-anything's ``Sam`` assembled the way its ``build_sam`` does, at toy sizes."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    emb = SAM_SIZE // 8
    with seeded(SEED_SAM_SA):
        sam = Sam(
            image_encoder=ImageEncoderViT(img_size=SAM_SIZE, patch_size=8, embed_dim=HIDDEN, depth=2, num_heads=2,
                                          mlp_ratio=2.0, out_chans=HIDDEN, qkv_bias=True,
                                          norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), use_rel_pos=True,
                                          window_size=4, global_attn_indexes=(1,)),
            prompt_encoder=PromptEncoder(embed_dim=HIDDEN, image_embedding_size=(emb, emb),
                                         input_image_size=(SAM_SIZE, SAM_SIZE), mask_in_chans=4),
            mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                     transformer=TwoWayTransformer(depth=2, embedding_dim=HIDDEN, mlp_dim=64, num_heads=2),
                                     transformer_dim=HIDDEN, iou_head_depth=2, iou_head_hidden_dim=HIDDEN),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


# groundingdino-py: a config module (the same keys as its GroundingDINO_SwinT_OGC.py) at toy sizes.
# ``tiny_swin`` is read by our compatibility layer (gdino_compat), which builds a Swin with these
# sizes where the package only knows the full-size variants. hidden_dim stays 256: the package's
# encoder hard-codes 256 features for the text position embedding.
def tiny_gdino_py_config(text_encoder_dir: str) -> dict:
    return dict(
        batch_size=1, modelname="groundingdino", backbone="swin_T_224_1k",
        tiny_swin=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4),
        position_embedding="sine", pe_temperatureH=20, pe_temperatureW=20, return_interm_indices=[1, 2, 3],
        backbone_freeze_keywords=None, enc_layers=1, dec_layers=2, pre_norm=False, dim_feedforward=64,
        hidden_dim=256, dropout=0.0, nheads=2, num_queries=30, query_dim=4, num_patterns=0,
        num_feature_levels=4, enc_n_points=2, dec_n_points=2, two_stage_type="standard",
        two_stage_bbox_embed_share=False, two_stage_class_embed_share=False, transformer_activation="relu",
        dec_pred_bbox_embed_share=True, dn_box_noise_scale=1.0, dn_label_noise_ratio=0.5, dn_label_coef=1.0,
        dn_bbox_coef=1.0, embed_init_tgt=True, dn_labelbook_size=2000, max_text_len=MAX_TEXT_LEN,
        text_encoder_type=text_encoder_dir, use_text_enhancer=True, use_fusion_layer=True, use_checkpoint=False,
        use_transformer_ckpt=False, use_text_cross_attention=True, text_dropout=0.0, fusion_dropout=0.0,
        fusion_droppath=0.0, sub_sentence_present=True)


def write_config_py(values: dict, path: Path) -> Path:
    """A config module in the format groundingdino-py's SLConfig reads (plain assignments)."""
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in values.items()))
    return path


def cache_dir() -> Path:
    import os
    d = Path(os.environ.get("PAIRFORGE_CACHE", Path.home() / ".cache" / "pairforge")) / "tiny"
    d.mkdir(parents=True, exist_ok=True)
    return d


@lru_cache(maxsize=1)
def tiny_bert_dir() -> str:
    """A local BERT folder (tiny random BertModel + the offline WordPiece tokenizer), the kind of
    folder groundingdino-py's ``text_encoder_type`` must name to stay off the hub. Written once;
    the weights are seeded, so every process writes the same folder."""
    from transformers import BertConfig, BertModel

    d = cache_dir() / "bert-tiny-random"
    if not (d / "config.json").exists():
        tmp = d.with_name(d.name + f".tmp{__import__('os').getpid()}")
        tok = tiny_tokenizer()
        with seeded(SEED_BERT):
            bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=HIDDEN, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64,
                                        max_position_embeddings=MAX_TEXT_LEN))
        bert.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(d)                       # atomic: a concurrent writer's folder is as good
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return str(d)
