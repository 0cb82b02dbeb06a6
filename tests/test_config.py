"""Job files: valid profiles load; every kind of mistake names the file, the field and the expectation."""
from pathlib import Path

import pytest

from pipeline.config import ConfigError, JobConfig, describe_fields, load_job

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("profile", ["local.yaml", "paper.yaml"])
def test_profiles_validate(profile):
    cfg = load_job(ROOT / "deploy" / "profiles" / profile)
    assert cfg.tasks


def test_unknown_field_names_file_and_path(tmp_path):
    p = _write(tmp_path, "llm:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_job(p)
    msg = str(e.value)
    assert str(p) in msg and "llm.temprature" in msg and "unknown field" in msg


def test_wrong_type_says_what_was_expected(tmp_path):
    p = _write(tmp_path, "output:\n  rows_per_shard: lots\n")
    msg = str(pytest.raises(ConfigError, load_job, p).value)
    assert "output.rows_per_shard" in msg and "integer" in msg and "'lots'" in msg


def test_out_of_range_and_unknown_task(tmp_path):
    p = _write(tmp_path, "llm:\n  top_p: 3\ntasks:\n  colour: 1\n")
    msg = str(pytest.raises(ConfigError, load_job, p).value)
    assert "llm.top_p" in msg and "tasks" in msg and "'colour' is not implemented" in msg


def test_source_path_required(tmp_path):
    p = _write(tmp_path, "source:\n  kind: captions\n")
    assert "source.path is required" in str(pytest.raises(ConfigError, load_job, p).value)


def test_a_shard_holds_whole_source_rows(tmp_path):
    """All ``repeats`` samples of a source row go to one shard, so the duplicate-instruction check
    at compaction sees every sample of a caption: a rows_per_shard that would split a row is refused,
    naming both fields and the nearest value that works."""
    p = _write(tmp_path, "source:\n  repeats: 3\noutput:\n  rows_per_shard: 32\n")
    msg = str(pytest.raises(ConfigError, load_job, p).value)
    assert str(p) in msg and "output.rows_per_shard" in msg and "source.repeats" in msg
    assert "33" in msg                                            # the nearest multiple of 3 to 32
    assert "=72" in str(pytest.raises(ConfigError, load_job, p, {"output.rows_per_shard": 71}).value)
    assert load_job(p, {"output.rows_per_shard": 33}).output.rows_per_shard == 33
    # left at its default, rows_per_shard becomes the multiple of repeats nearest to 64
    assert JobConfig.model_validate({"source": {"repeats": 3}}).output.rows_per_shard == 63
    assert JobConfig.model_validate({"source": {"repeats": 100}}).output.rows_per_shard == 100
    assert JobConfig.model_validate({"source": {"repeats": 2}}).output.rows_per_shard == 64
    again = JobConfig.model_validate(JobConfig.model_validate({"source": {"repeats": 3}}).model_dump())
    assert again.output.rows_per_shard == 63                      # the resolved config reloads as it was


def test_not_yaml_and_missing_file(tmp_path):
    p = _write(tmp_path, "a: [1, 2\n")
    assert "not valid YAML" in str(pytest.raises(ConfigError, load_job, p).value)
    assert "not found" in str(pytest.raises(ConfigError, load_job, tmp_path / "nope.yaml").value)


def test_every_field_has_a_description():
    lines = describe_fields()
    assert all(": None" not in line for line in lines), [l for l in lines if ": None" in l]
    assert any(line.startswith("llm.temperature") for line in lines)


def test_overrides_and_config_hash_ignore_output_location(tmp_path):
    p = _write(tmp_path, "seed: 3\n")
    a = load_job(p, {"output.path": "/tmp/a"})
    b = load_job(p, {"output.path": "/tmp/b"})
    c = load_job(p, {"seed": 4})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    assert isinstance(a, JobConfig)


@pytest.mark.parametrize("block", ["diffusion", "grounding", "filters", "text", "translation"])
def test_every_model_stage_has_a_checked_device(tmp_path, block):
    """Each stage that runs models says where (auto = the GPU its actor was granted); a typo is a
    config error naming the field, not a crash in an actor's setup."""
    assert getattr(JobConfig(), block).device == "auto"
    assert getattr(JobConfig.model_validate({block: {"device": "cuda:1"}}), block).device == "cuda:1"
    msg = str(pytest.raises(ConfigError, load_job, _write(tmp_path, f"{block}:\n  device: gpu0\n")).value)
    assert f"{block}.device" in msg and "'gpu0' is not a device" in msg


def test_auto_device_runs_the_filter_and_translation_models_here():
    """On a machine without a GPU, auto puts every filter and annotator model on the CPU."""
    from filters import build_filters
    from pipeline.translate.annotators import Annotators

    cfg = JobConfig.model_validate({"tasks": {"texture": 1, "depth": 1, "pose": 1, "segmentation": 1}})
    models = []
    for f in build_filters(cfg):
        for m in (getattr(getattr(f, "models", None), "clip", None), getattr(getattr(f, "predict", None), "__self__", None)):
            if m is not None:
                models.append(m.model)
    ann = Annotators(cfg, {"depth", "pose", "segmentation"})
    models += [ann._by_task["pose"].model, ann._by_task["segmentation"].model, ann._depth.estimator.model]
    assert len(models) == 5                  # CLIP, the filter's depth model, pose, segmentation, depth map
    assert {str(next(m.parameters()).device) for m in models} == {"cpu"} and ann.device == "cpu"
