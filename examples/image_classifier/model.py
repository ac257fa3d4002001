"""JPEG bytes in, labels out: Pillow decodes and resizes, the folder's Keras SavedModel classifies,
labels.txt (in the folder) names the classes.

The version folder holds this file, labels.txt and the SavedModel export.py writes. The
SavedModel's own signature takes [n, 64, 64, 3] float32 pixels in [0, 1]; this one takes images.
"""

import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from pyserving import InvalidInput

SIZE = (64, 64)


class Model:
    signatures = {"serving_default": {
        "inputs": {"image": ("string", [-1])},
        "outputs": {"label": ("string", [-1]), "score": ("float32", [-1])}}}

    def __init__(self, path: str, saved_model=None):
        self._classify = saved_model  # the folder's SavedModel, run by pyserving's runtime
        with open(os.path.join(path, "labels.txt"), encoding="utf-8") as f:
            self._labels = np.array([line.strip().encode() for line in f if line.strip()], dtype=object)

    def predict(self, inputs: dict, signature_name: str) -> dict:
        pixels = np.stack([self._decode(data) for data in inputs["image"].ravel()])
        probabilities = self._classify("serving_default", {"pixels": pixels})["probabilities"]
        best = probabilities.argmax(axis=1)
        return {"label": self._labels[best], "score": probabilities.max(axis=1).astype(np.float32)}

    @staticmethod
    def _decode(data: bytes) -> np.ndarray:
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB").resize(SIZE)
        except (UnidentifiedImageError, OSError) as e:
            raise InvalidInput(f"image is not a JPEG or PNG Pillow can read: {e}") from None
        return np.asarray(image, dtype=np.float32) / 255.0
