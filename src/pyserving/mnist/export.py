"""Train the TF Serving tutorial's softmax regression and export it as a SavedModel.

The model is built in TF1 graph mode inside a private tf.Graph, so that the exported
SavedModel has exactly the tutorial's signatures (a predict signature on raw images and
a classify signature on serialized tf.Example protos) without switching the whole
process out of eager mode.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyserving.mnist.data import IMAGE_PIXELS, MnistData

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_CLASSES = 10
PREDICT_SIGNATURE = "predict_images"


@dataclass
class ExportResult:
    path: str
    version: int
    test_accuracy: float


@dataclass
class _Graph:
    """The tensors of the tutorial's graph that training and export refer to."""

    serialized_tf_example: Any
    x: Any
    y_: Any
    y: Any
    train_step: Any
    accuracy: Any
    values: Any
    prediction_classes: Any


def _build_graph(tf: Any, learning_rate: float) -> _Graph:
    v1 = tf.compat.v1
    serialized_tf_example = v1.placeholder(tf.string, name="tf_example")
    feature_configs = {"x": tf.io.FixedLenFeature(shape=[IMAGE_PIXELS], dtype=tf.float32)}
    tf_example = tf.io.parse_example(serialized_tf_example, feature_configs)
    # Named so the predict signature (and training, via feed_dict) can bypass parsing.
    x = tf.identity(tf_example["x"], name="x")
    y_ = v1.placeholder(tf.float32, shape=[None, NUM_CLASSES])
    w = tf.Variable(tf.zeros([IMAGE_PIXELS, NUM_CLASSES]))
    b = tf.Variable(tf.zeros([NUM_CLASSES]))
    y = tf.nn.softmax(tf.matmul(x, w) + b, name="y")
    cross_entropy = -tf.reduce_sum(y_ * tf.math.log(y))
    train_step = v1.train.GradientDescentOptimizer(learning_rate).minimize(cross_entropy)
    correct = tf.equal(tf.argmax(y, 1), tf.argmax(y_, 1))
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))
    # Classify returns all ten classes, best first, as strings.
    values, indices = tf.nn.top_k(y, NUM_CLASSES)
    # A v1 table registers its initializer in TABLE_INITIALIZERS, which the
    # exported main_op (tables_initializer) runs when a server loads the model.
    table = v1.lookup.StaticHashTable(
        v1.lookup.KeyValueTensorInitializer(
            keys=tf.range(NUM_CLASSES, dtype=tf.int64),
            values=tf.constant([str(i) for i in range(NUM_CLASSES)]),
        ),
        default_value="UNK",
    )
    prediction_classes = table.lookup(tf.cast(indices, tf.int64))
    return _Graph(serialized_tf_example, x, y_, y, train_step, accuracy, values, prediction_classes)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def _batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless batches from reshuffled epochs, dropping each epoch's ragged tail."""
    count = len(images) - len(images) % batch_size
    while True:
        order = rng.permutation(len(images))
        for start in range(0, count, batch_size):
            chosen = order[start : start + batch_size]
            yield images[chosen], _one_hot(labels[chosen])


def _signatures(tf: Any, g: _Graph) -> dict[str, Any]:
    v1 = tf.compat.v1
    info = v1.saved_model.utils.build_tensor_info
    consts = v1.saved_model.signature_constants
    classify = v1.saved_model.signature_def_utils.build_signature_def(
        inputs={consts.CLASSIFY_INPUTS: info(g.serialized_tf_example)},
        outputs={
            consts.CLASSIFY_OUTPUT_CLASSES: info(g.prediction_classes),
            consts.CLASSIFY_OUTPUT_SCORES: info(g.values),
        },
        method_name=consts.CLASSIFY_METHOD_NAME,
    )
    predict = v1.saved_model.signature_def_utils.build_signature_def(
        inputs={"images": info(g.x)},
        outputs={"scores": info(g.y)},
        method_name=consts.PREDICT_METHOD_NAME,
    )
    return {PREDICT_SIGNATURE: predict, consts.DEFAULT_SERVING_SIGNATURE_DEF_KEY: classify}


def _train_and_save(tf: Any, tmp_dir: str, data: MnistData, settings: dict[str, Any]) -> float:
    v1 = tf.compat.v1
    # Two cores at most: keep training from starving a server running alongside.
    config = v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
    with tf.Graph().as_default() as graph, v1.Session(graph=graph, config=config) as sess:
        v1.set_random_seed(settings["seed"])
        g = _build_graph(tf, settings["learning_rate"])
        sess.run(v1.global_variables_initializer())
        batches = _batches(
            data.train_images, data.train_labels, settings["batch_size"], np.random.default_rng(settings["seed"])
        )
        for _ in range(settings["training_iteration"]):
            batch_x, batch_y = next(batches)
            sess.run(g.train_step, feed_dict={g.x: batch_x, g.y_: batch_y})
        accuracy = sess.run(g.accuracy, feed_dict={g.x: data.test_images, g.y_: _one_hot(data.test_labels)})
        builder = v1.saved_model.Builder(tmp_dir)
        builder.add_meta_graph_and_variables(
            sess,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map=_signatures(tf, g),
            main_op=v1.tables_initializer(),
            strip_default_attrs=True,
        )
        builder.save()
    return float(accuracy)


def export_mnist(
    base_path: str,
    version: int,
    data: MnistData,
    training_iteration: int = 1000,
    batch_size: int = 50,
    learning_rate: float = 0.01,
    seed: int = 0,
) -> ExportResult:
    """Train for training_iteration steps and export to base_path/<version>."""
    if version < 0:
        raise ValueError(f"model version must be a non-negative integer, got {version}")
    final_dir = os.path.join(base_path, str(version))
    if os.path.exists(final_dir):
        raise ValueError(f"export directory {final_dir} already exists; pick another --model_version")
    os.makedirs(base_path, exist_ok=True)
    # A non-numeric sibling is ignored by servers polling base_path, and the final
    # rename is atomic, so a half-written version is never visible.
    tmp_dir = os.path.join(base_path, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)

    import tensorflow as tf

    # The tutorial's TF1 API is deprecated on purpose; its warnings are noise here.
    tf.get_logger().setLevel("ERROR")
    settings = dict(
        training_iteration=training_iteration, batch_size=batch_size, learning_rate=learning_rate, seed=seed
    )
    try:
        accuracy = _train_and_save(tf, tmp_dir, data, settings)
        os.rename(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return ExportResult(path=final_dir, version=version, test_accuracy=accuracy)
