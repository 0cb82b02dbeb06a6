"""The trainer's config: one pydantic model, loaded from a YAML file under ``trainer/configs/``
(``paper.yaml`` holds the paper's values, ``tiny.yaml`` what runs on a CPU in seconds) plus
``--set block.field=value`` overrides. Errors name the file and the field."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import ConfigError, _format_errors, describe_fields, read_config_file

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    base: str = Field("tiny-random", description="where the weights start: `tiny-random` (random-init tiny "
                      "components from config), a text-to-image checkpoint in the diffusers layout (its UNet gets 4 "
                      "extra zero-initialised input channels for the input image), or a checkpoint this trainer saved")
    unet_shape: Literal["default", "deep"] = Field("default", description="tiny UNet layout (tiny-random only)")
    resolution: int = Field(32, ge=16, description="training image side in pixels (square; images are centre-cropped "
                            "and resized); must be a multiple of the VAE × UNet downsampling")
    zero_terminal_snr: bool = Field(False, description="rescale the noise schedule to zero SNR at the last step "
                                    "(Lin et al. 2023, as the paper does); requires v-prediction")
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="what the UNet predicts")

    @model_validator(mode="after")
    def _snr_needs_v(self):
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("model.zero_terminal_snr needs model.prediction_type: v_prediction "
                             "(noise cannot be predicted from pure noise)")
        return self


class DataConfig(_Strict):
    shards: list[str] = Field(default_factory=list, description="job output folders (their data/part-*.parquet "
                              "listed in manifest.json) or parquet files; `--shards` on the command line sets it")
    tasks: list[str] | None = Field(None, description="train only on these tasks (the `task` column); null = all")
    instruction_column: Literal["instruction", "instruction_agent", "instruction_rewrite"] = Field(
        "instruction", description="the column the model learns its instruction from: `instruction` (the one the "
        "job chose with judge.rewrite.train_on), `instruction_agent` (the LLM agent's) or `instruction_rewrite` "
        "(the VLM judge's, written from the pair; rows without one are skipped as no_instruction)")
    holdout_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of rows held out for "
                                    "`pairforge eval`, chosen by a hash of the row id (stable across runs)")
    shuffle_buffer: int = Field(256, ge=1, description="rows shuffled together while streaming")
    max_examples: int | None = Field(None, ge=1, description="use only the first N matching rows (task inversion: "
                                     "a few examples)")


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_steps: int = Field(2, ge=0, description="linear warm-up steps before the cosine decay")
    max_steps: int = Field(40, ge=1, description="optimizer steps in total (cosine decays to 0 at this step)")
    batch_size: int = Field(4, ge=1, description="samples per device per step (global batch = this × devices × "
                            "grad_accum)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")


class TrainConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig, description="architecture and starting weights")
    data: DataConfig = Field(default_factory=DataConfig, description="which shard rows to stream")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW with linear warm-up and cosine decay")
    cond_dropout: float = Field(0.05, ge=0, le=1 / 3, description="probability of dropping the instruction, of "
                                "dropping the input image, and of dropping both (each; InstructPix2Pix's value), "
                                "so the model learns the unconditional branches of classifier-free guidance")
    ema_decay: float | None = Field(0.999, gt=0, lt=1, description="EMA decay of the trained weights; the "
                                    "checkpoint's model holds the EMA weights; null = no EMA")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate mixed precision")
    seed: int = Field(0, description="seed of data order, noise, timesteps and dropout")
    output_dir: str = Field("runs/editor", description="checkpoints and TensorBoard logs go here")
    log_every: int = Field(1, ge=1, description="log the loss every N steps")
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="step checkpoints kept (the final one is always kept)")

    def resolved_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_train_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """A config file (a name like ``tiny`` means ``trainer/configs/tiny.yaml``) plus dotted overrides."""
    path = Path(path or "tiny")
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{path}.yaml"
    data = read_config_file(path, overrides, what="trainer config (see trainer/configs/)")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(str(path), e).replace("invalid job config", "invalid trainer config")
                          .replace("pairforge run --help-config", "pairforge train --help-config")) from None


def describe() -> list[str]:
    return describe_fields(TrainConfig)
