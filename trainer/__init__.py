"""The task-conditioned editing model (Emu Edit §4) trained on the shards: model.py (UNet + task
embedding, checkpoint layout), data.py (streaming shard rows), train.py (the loop; accelerate and
Ray Train), edit.py (guidance, thresholding), evaluate.py (the paper's metrics), cli.py."""
