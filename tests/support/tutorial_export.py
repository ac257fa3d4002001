"""MNIST exported the way TF Serving's tutorial exporter does it (TF1 style).

Independent of pyserving's own exporter: it uses the TF1 modules the tutorial
imports (saved_model builder, signature_def_utils, utils, lookup_ops'
index_to_string table) and its ``legacy_init_op`` for the table initialiser,
so the server is checked against the tutorial's artefact, not against itself.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import lookup_ops
from tensorflow.python.saved_model import builder as saved_model_builder
from tensorflow.python.saved_model import signature_constants, signature_def_utils, tag_constants
from tensorflow.python.saved_model import utils as saved_model_utils

from pyserving.mnist.data import MnistData


def export_like_tutorial(export_path_base: str, model_version: int, data: MnistData,
                         training_iteration: int = 1000) -> str:
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as sess:
        serialized_tf_example = v1.placeholder(tf.string, name="tf_example")
        feature_configs = {"x": v1.FixedLenFeature(shape=[784], dtype=tf.float32)}
        tf_example = v1.parse_example(serialized_tf_example, feature_configs)
        x = tf.identity(tf_example["x"], name="x")
        y_ = v1.placeholder("float", shape=[None, 10])
        w = tf.Variable(tf.zeros([784, 10]))
        b = tf.Variable(tf.zeros([10]))
        sess.run(v1.global_variables_initializer())
        y = tf.nn.softmax(tf.matmul(x, w) + b, name="y")
        cross_entropy = -tf.reduce_sum(y_ * v1.log(y))
        train_step = v1.train.GradientDescentOptimizer(0.01).minimize(cross_entropy)
        values, indices = tf.nn.top_k(y, 10)
        table = lookup_ops.index_to_string_table_from_tensor(tf.constant([str(i) for i in range(10)]))
        prediction_classes = table.lookup(v1.to_int64(indices))
        rng = np.random.default_rng(7)
        labels = np.eye(10, dtype=np.float32)[data.train_labels]
        for _ in range(training_iteration):
            batch = rng.choice(len(labels), 50, replace=False)
            sess.run(train_step, feed_dict={x: data.train_images[batch], y_: labels[batch]})

        export_path = os.path.join(export_path_base, str(model_version))
        builder = saved_model_builder.SavedModelBuilder(export_path)
        info = saved_model_utils.build_tensor_info
        classification_signature = signature_def_utils.build_signature_def(
            inputs={signature_constants.CLASSIFY_INPUTS: info(serialized_tf_example)},
            outputs={signature_constants.CLASSIFY_OUTPUT_CLASSES: info(prediction_classes),
                     signature_constants.CLASSIFY_OUTPUT_SCORES: info(values)},
            method_name=signature_constants.CLASSIFY_METHOD_NAME)
        prediction_signature = signature_def_utils.build_signature_def(
            inputs={"images": info(x)}, outputs={"scores": info(y)},
            method_name=signature_constants.PREDICT_METHOD_NAME)
        legacy_init_op = tf.group(v1.tables_initializer(), name="legacy_init_op")
        builder.add_meta_graph_and_variables(
            sess, [tag_constants.SERVING],
            signature_def_map={
                "predict_images": prediction_signature,
                signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY: classification_signature,
            },
            legacy_init_op=legacy_init_op)
        builder.save()
    return export_path
