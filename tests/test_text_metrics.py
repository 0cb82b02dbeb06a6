"""Diversity metrics against independent computations, and the real MiniLM embeddings."""
import itertools

import numpy as np

from pipeline.text_metrics import distinct_n, embed, mean_pairwise_cosine


def test_distinct_2_by_hand():
    texts = ["make it dark", "make it dark", "make it bright"]
    # bigrams: (make,it)x3 (it,dark)x2 (it,bright)x1 → 3 unique of 6
    assert distinct_n(texts, 2) == 3 / 6
    assert distinct_n(["a"], 2) == 0.0


def test_mean_pairwise_cosine_matches_explicit_loop():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(7, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    loop = np.mean([float(e[i] @ e[j]) for i, j in itertools.combinations(range(7), 2)])
    assert abs(mean_pairwise_cosine(e) - loop) < 1e-12


def test_minilm_embeddings_are_real():
    e = embed(["Make the photo black and white.", "Turn the picture into greyscale.",
               "Add a giraffe standing next to the car."])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2        # paraphrases closer than unrelated edits
