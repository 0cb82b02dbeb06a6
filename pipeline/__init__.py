"""pairforge pipeline: sources → instruct (LLM) → load image → make pair → filter → Parquet shards."""
__version__ = "0.1.0"
