"""Ray Train: two CPU workers (gloo) run the same training loop together and leave one checkpoint."""
from __future__ import annotations

import pytest

from test_trainer import make_shards


@pytest.mark.slow
def test_two_ray_workers_train_together(tmp_path):
    import ray

    from trainer.config import load_train_config
    from trainer.model import load_edit_model
    from trainer.train import train_ray

    shards = make_shards(tmp_path / "job", n_color=16, n_sketch=8)
    cfg = load_train_config("tiny", {"data.shards": [str(shards)], "output_dir": str(tmp_path / "run"),
                                     "optim.max_steps": 6, "optim.batch_size": 2, "checkpoint_every": 0})
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        s = train_ray(cfg, num_workers=2)
    finally:
        ray.shutdown()
    assert s["world"] == 2 and s["steps"] == 6
    assert s["ranks_in_sync"]                          # gradients were all-reduced: identical weights on both
    finals = list((tmp_path / "run").glob("**/final/unet/config.json"))
    assert len(finals) == 1                            # rank 0 alone wrote it
    ckpts = list((tmp_path / "run").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-6"]
    em = load_edit_model(tmp_path / "run" / "final")
    assert em.meta["step"] == 6
