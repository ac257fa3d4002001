"""Post-processing around the tutorial's MNIST SavedModel: its ten scores become the three most
likely digits by name, with their scores.

The version folder holds the SavedModel `pyserving mnist export` writes, and this file.
"""

import numpy as np

from pyserving import InvalidInput

NAMES = np.array([n.encode() for n in "zero one two three four five six seven eight nine".split()], dtype=object)
K = 3


class Model:
    # Declared signatures replace the SavedModel's: this model answers with names, not scores.
    signatures = {"serving_default": {
        "inputs": {"images": ("float32", [-1, 784])},
        "outputs": {"digits": ("string", [-1, K]), "scores": ("float32", [-1, K])}}}

    def __init__(self, path: str, saved_model=None):
        if saved_model is None:
            raise ValueError(f"{path} holds no SavedModel: put `pyserving mnist export`'s version folder here")
        self._mnist = saved_model  # the folder's SavedModel, run by pyserving's runtime

    def predict(self, inputs: dict, signature_name: str) -> dict:
        images = inputs["images"]
        if images.ndim != 2 or images.shape[1] != 784:
            raise InvalidInput(f"images must be [n, 784] (28x28 pixels in [0, 1]), not {list(images.shape)}")
        scores = self._mnist("predict_images", {"images": images})["scores"]
        best = np.argsort(-scores, axis=1)[:, :K]
        return {"digits": NAMES[best], "scores": np.take_along_axis(scores, best, axis=1)}
