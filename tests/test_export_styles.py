"""Every export style users bring, served by the real server; each loads through the runtime
TF Serving would use (a Session), except where a Session cannot run it, and the log says which."""

from __future__ import annotations

import numpy as np
import pytest
from support import models
from support.server import serve_models

FEATURES = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]], np.float32)

# name -> (exporter, runtime that serves it, the signature's input alias)
STYLES = {
    "tf1_builder": (models.export_tf1_half_plus_two, "session", "x"),
    "tf1_examples": (models.export_tf1_examples, "session", "inputs"),
    "tf2_function": (models.export_tf2_linear, "session", "x"),
    "keras2": (models.export_keras2, "session", "features"),
    "keras2_mirrored": (lambda p: models.export_keras2(p, mirrored=True), "session", "features"),
    "keras3_export": (models.export_keras, "session", "features"),
    # Keras 3 through tf.saved_model.save: the graph reads variables its Session loader never
    # restores (TF Serving fails on its first request); TF2's object loader runs it.
    "keras3_saved_model_save": (models.export_keras_saved_model, "function", "inputs"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    server = serve_models(root, {name: export for name, (export, _, _) in STYLES.items()})
    yield server, root
    assert server.stop() == 0


@pytest.mark.parametrize("name", STYLES)
def test_loaded_by_the_expected_runtime(served, name):
    server, root = served
    runtime = STYLES[name][1]
    assert f"Loaded {root / name / '1'} with the {runtime} runtime in " in server.log()


@pytest.mark.parametrize("name", ["keras2", "keras2_mirrored", "keras3_saved_model_save"])
def test_keras_saved_model_answers_as_tensorflow(served, name):
    server, root = served
    expected = models.keras_saved_reference(str(root / name / "1"), FEATURES)
    r = server.post(f"/v1/models/{name}:predict", json={"instances": FEATURES.tolist()})
    assert r.status_code == 200, r.text
    (output,) = expected.values()
    np.testing.assert_allclose(np.array(r.json()["predictions"]), output, rtol=1e-5)


def test_keras3_export_answers_as_tensorflow(served):
    server, root = served
    expected = models.keras_reference(str(root / "keras3_export" / "1"), FEATURES)
    r = server.post("/v1/models/keras3_export:predict", json={"inputs": {"features": FEATURES.tolist()}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"]), expected, rtol=1e-5)


def test_parse_example_over_string_input(served):
    server, _ = served
    r = server.post("/v1/models/tf1_examples:regress", json={"signature_name": "regress",
                                                             "examples": [{"x": 1.5, "bias": 1.0}, {"x": -2.0}]})
    assert r.json() == {"results": [4.0, -4.0]}

