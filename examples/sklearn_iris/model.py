"""A scikit-learn model served by pyserving, no SavedModel: iris flowers from four measurements.

The version folder holds this file and model.joblib (written by train.py). pyserving serves it
with --enable_python_models over TF Serving's API and the Open Inference Protocol.
"""

import os

import joblib
import numpy as np

from pyserving import InvalidInput

SPECIES = np.array([b"setosa", b"versicolor", b"virginica"], dtype=object)


class Model:
    # Required without a SavedModel: what clients send and get (numpy's dtype names, -1 = any size).
    signatures = {"serving_default": {
        "inputs": {"measurements": ("float32", [-1, 4])},
        "outputs": {"species": ("string", [-1]), "probabilities": ("float32", [-1, 3])}}}

    def __init__(self, path: str):
        self._classifier = joblib.load(os.path.join(path, "model.joblib"))

    def predict(self, inputs: dict, signature_name: str) -> dict:
        x = inputs["measurements"]
        if x.ndim != 2 or x.shape[1] != 4:
            raise InvalidInput(f"measurements must be [n, 4] (sepal and petal length and width), not {list(x.shape)}")
        probabilities = self._classifier.predict_proba(x).astype(np.float32)
        return {"species": SPECIES[probabilities.argmax(axis=1)], "probabilities": probabilities}
