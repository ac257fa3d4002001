"""A YDF forest served by pyserving as a Python model: the probability that a customer renews.

The version folder holds this file and forest/ (a YDF model, written by train.py). pyserving
serves it with --enable_python_models over TF Serving's API and the Open Inference Protocol.
"""

import os

import numpy as np
import ydf

from pyserving import InvalidInput


class Model:
    signatures = {"serving_default": {
        "inputs": {"age": ("float32", [-1]), "country": ("string", [-1])},
        "outputs": {"probability": ("float32", [-1])}}}

    def __init__(self, path: str):
        self._forest = ydf.load_model(os.path.join(path, "forest"))

    def predict(self, inputs: dict, signature_name: str) -> dict:
        age, country = inputs["age"], inputs["country"]
        if age.shape != country.shape or age.ndim != 1:
            raise InvalidInput(f"age and country must be lists of one length, not {list(age.shape)} "
                               f"and {list(country.shape)}")
        features = {"age": age, "country": np.array([c.decode("utf-8") for c in country])}
        return {"probability": self._forest.predict(features).astype(np.float32)}
