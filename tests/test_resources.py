"""`pairforge plan`: actor pools vs the cluster, before anything runs (no Ray started here)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import JobConfig, StagesConfig, load_job
from pipeline.resources import GIB, check_fits, job_cluster_nodes, launcher_nodes, pool_specs, requirements
from pipeline.stages import CHAIN
from tasks import implemented

ROOT = Path(__file__).resolve().parents[1]
PAPER, CLUSTER = ROOT / "deploy/profiles/paper.yaml", ROOT / "deploy/ray-cluster.yaml"
NODE = {"CPU": 96, "GPU": 8, "memory": 512 * GIB}          # one 8-GPU node


def _cfg(**stages) -> JobConfig:
    return JobConfig.model_validate({"tasks": {"local": 1, "color": 1}, "stages": stages})


def _plan(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}    # no live cluster here
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("tasks", ["paper", "all"])
def test_paper_profile_fits_the_launcher_cluster(tasks):
    # "all": the text and translate pools start too once paper.yaml lists those tasks; still fits
    cfg = load_job(PAPER)
    pools = pool_specs(cfg, set(cfg.tasks) if tasks == "paper" else set(implemented()))
    nodes = launcher_nodes(CLUSTER)
    assert check_fits(pools, nodes) == []
    need, have = requirements(pools)["GPU"], sum(n["GPU"] for n in nodes)
    print(f"paper.yaml ({tasks} tasks) GPU budget: {need:g} of {have:g} GPUs: "
          + ", ".join(f"{p.stage} {p.actors * p.num_gpus:g}" for p in pools if p.num_gpus))
    assert need <= have == 64


def test_launcher_nodes_counts_max_workers_and_the_overall_cap(tmp_path):
    nodes = launcher_nodes(CLUSTER)
    assert len(nodes) == 1 + 16 + 4 and nodes[0]["GPU"] == 0 and nodes[0]["llm_host"] == 1
    capped = tmp_path / "c.yaml"
    capped.write_text("max_workers: 3\nhead_node_type: h\navailable_node_types:\n"
                      "  h: {resources: {CPU: 8, GPU: 0}}\n"
                      "  g: {max_workers: 2, resources: {CPU: 48, GPU: 4}}\n"
                      "  c: {max_workers: 4, resources: {CPU: 64, GPU: 0}}\n")
    assert [n["CPU"] for n in launcher_nodes(capped)] == [8, 48, 48, 64]     # 3 workers at most
    capped.write_text("head_node_type: h\navailable_node_types:\n  h: {resources: {CPU: 8}}\n")
    with pytest.raises(ValueError, match="available_node_types.h.resources: declare GPU"):
        launcher_nodes(capped)


def test_run_on_a_launcher_head_counts_what_the_autoscaler_can_add(tmp_path):
    # on the head of a `ray up` cluster only 2 GPU workers may be alive when the job starts
    boot = tmp_path / "ray_bootstrap_config.yaml"
    boot.write_text(CLUSTER.read_text())
    nodes, what = job_cluster_nodes(boot)
    assert len(nodes) == 21 and "64 GPUs" in what


def test_too_many_gpus_names_the_stage_and_field():
    cfg = _cfg(diffusion_edit={"actors": 32, "num_gpus": 1})
    problems = check_fits(pool_specs(cfg, set(cfg.tasks)), [NODE])
    assert "stages.diffusion_edit: 32 actors × 1 GPU = 32 GPUs, the cluster has 8 GPUs" in problems


def test_pools_too_big_only_together_are_all_named():
    cfg = _cfg(diffusion={"actors": 4, "num_gpus": 1}, ground={"actors": 2, "num_gpus": 1})
    problems = check_fits(pool_specs(cfg, set(cfg.tasks)), [NODE])
    assert len(problems) == 1 and problems[0].startswith("GPU: the pools need 10 GPUs together, the cluster has 8")
    for label in ("stages.diffusion (the diffusion_base pool) 4 × 1", "stages.diffusion (the diffusion_edit pool)",
                  "stages.ground 2 × 1"):
        assert label in problems[0]


def test_an_actor_bigger_than_any_node_is_reported():
    # two 1-GPU nodes hold 2 GPUs in total, but no node holds one 2-GPU actor
    nodes = [{"CPU": 16, "GPU": 1, "memory": 64 * GIB}] * 2
    cfg = _cfg(ground={"actors": 1, "num_cpus": 2, "num_gpus": 2}, filter={"actors": 1, "memory_gb": 100})
    problems = check_fits(pool_specs(cfg, set(cfg.tasks)), nodes)
    assert any(m.startswith("stages.ground: one actor needs 2 CPUs, 2 GPUs") for m in problems), problems
    assert any(m.startswith("stages.filter: one actor needs") and "100 GiB memory" in m for m in problems), problems
    assert not any(m.startswith("GPU") for m in problems)


def test_custom_resource_the_cluster_lacks():
    cfg = _cfg(instruct={"actors": 2, "resources": {"llm_host": 0.1}})
    problems = check_fits(pool_specs(cfg, set(cfg.tasks)), [NODE])
    assert any("stages.instruct" in m and "llm_host" in m for m in problems), problems


def test_split_diffusion_settings_fall_back_to_diffusion():
    s = StagesConfig.model_validate({"diffusion": {"actors": 5, "num_gpus": 1}})
    assert s.for_stage("diffusion_base").actors == 5 and s.for_stage("diffusion_edit").actors == 5
    s = StagesConfig.model_validate({"diffusion": {"actors": 5, "num_gpus": 1}, "diffusion_edit": {"actors": 9}})
    assert s.for_stage("diffusion_base").actors == 5 and s.for_stage("diffusion_edit").actors == 9
    assert s.for_stage("diffusion_edit").num_gpus == 1           # a field left out comes from diffusion
    pools = {p.stage: p for p in pool_specs(JobConfig.model_validate({"stages": s.model_dump()}), {"local"})}
    assert pools["diffusion_base"].config_field == "stages.diffusion"
    assert pools["diffusion_edit"].config_field == "stages.diffusion_edit" and pools["diffusion_edit"].actors == 9
    # every stage of the chain finds its settings
    assert all(StagesConfig().for_stage(st.resources_key) is not None for st in CHAIN)


def test_pools_follow_the_tasks():
    cfg = _cfg()
    names = [p.stage for p in pool_specs(cfg, {"color"})]
    assert "pair_cpu" in names and "text" not in names and "translate" not in names
    # no SD, detector or segmenter actors (models loaded, GPUs held) for a task that uses none
    assert not {"ground", "diffusion_base", "diffusion_edit"} & set(names), names
    assert {"ground", "diffusion_base", "diffusion_edit"} <= {p.stage for p in pool_specs(cfg, {"color", "local"})}
    assert "ground" in {p.stage for p in pool_specs(cfg, {"background"})}
    assert "diffusion_base" not in {p.stage for p in pool_specs(cfg, {"detect"})}
    req = requirements(pool_specs(cfg, {"color"}))
    assert req["GPU"] == 0 and req["actors"] == len(names)


def test_plan_command_paper_against_the_launcher_cluster():
    p = _plan(str(PAPER), "--cluster", str(CLUSTER))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "needs 52 GPUs" in p.stdout and "fits " in p.stdout and "64 GPUs" in p.stdout
    assert "samples not counted" in p.stderr        # /data/... is not on this machine; the pools still count
    p = _plan(str(PAPER), "--cluster", str(CLUSTER), "--set", "stages.diffusion_edit.actors=80", "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["fits"] is False and any("stages.diffusion_edit: 80 actors" in m for m in out["problems"])


def test_plan_command_local_profile():
    p = _plan(str(ROOT / "deploy/profiles/local.yaml"), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["samples"] > 0 and out["shards"] >= 1 and out["fits"] is None and out["requirements"]["GPU"] == 0
    assert [q["stage"] for q in out["pools"]][-2:] == ["pair_cpu", "filter"]


@pytest.mark.slow
def test_run_refuses_pools_the_cluster_cannot_place(tmp_path):
    """`run` joins (here: starts) Ray, sees one GPU-less node, and stops with the field to change
    instead of waiting forever for an actor Ray can never place. Nothing is generated."""
    from tests.jobutil import run_cli, write_job
    job = write_job(tmp_path / "job.yaml", "http://127.0.0.1:9/v1",
                    stages__filter={"actors": 1, "num_cpus": 0.25, "num_gpus": 1, "batch_size": 4})
    p = run_cli("run", str(job), "--out", str(tmp_path / "out"), "--no-progress", check=False, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "stages.filter" in p.stderr and "GPU" in p.stderr
    assert not (tmp_path / "out" / "_commits").exists()
