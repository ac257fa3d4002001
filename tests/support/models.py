"""SavedModels the tests export themselves: TF1 builder, TF2 tf.function, Keras."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

# dtype name -> tf dtype, for the identity model that round-trips every dtype.
DTYPES = {
    "float": tf.float32, "double": tf.float64, "half": tf.float16, "bfloat16": tf.bfloat16,
    "int8": tf.int8, "int16": tf.int16, "int32": tf.int32, "int64": tf.int64,
    "uint8": tf.uint8, "uint16": tf.uint16, "uint32": tf.uint32, "uint64": tf.uint64,
    "bool": tf.bool, "string": tf.string, "complex64": tf.complex64, "complex128": tf.complex128,
}


def export_tf1_half_plus_two(path: str) -> str:
    """TF1 SavedModelBuilder export: y = 0.5 * x + 2, plus a lookup table in the main op.

    Signatures: serving_default (predict, x float [-1,1] -> y), 'lookup' (predict,
    keys int64 [-1] -> names string, via a table initialised by the main op).
    """
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        x = tf.compat.v1.placeholder(tf.float32, shape=[None, 1], name="x")
        a = tf.Variable(0.5, name="a")
        b = tf.Variable(2.0, name="b")
        y = tf.add(tf.multiply(a, x), b, name="y")
        keys = tf.compat.v1.placeholder(tf.int64, shape=[None], name="keys")
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([0, 1, 2], tf.int64), tf.constant(["zero", "one", "two"])), "unknown")
        names = table.lookup(keys)
        sess.run(tf.compat.v1.global_variables_initializer())
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        build = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess, ["serve"],
            signature_def_map={
                "serving_default": build({"x": info(x)}, {"y": info(y)}, "tensorflow/serving/predict"),
                "lookup": build({"keys": info(keys)}, {"names": info(names)},
                                "tensorflow/serving/predict"),
            },
            main_op=tf.compat.v1.tables_initializer())
        builder.save()
    return path


class _Linear(tf.Module):
    """TF2 module: y = x @ w + bias, with two outputs and a multi-input signature."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.w = tf.Variable([[1.0 * scale], [2.0 * scale]])
        self.bias = tf.Variable(scale)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def predict(self, x):
        y = tf.matmul(x, self.w) + self.bias
        return {"y": y, "y_sum": tf.reduce_sum(y, axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="a"),
                                  tf.TensorSpec([None], tf.float32, name="b")])
    def add(self, a, b):
        return {"sum": a + b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def echo_bytes(self, text):
        return {"text_bytes": tf.identity(text), "length": tf.strings.length(text)}


def export_tf2_linear(path: str, scale: float = 1.0) -> str:
    module = _Linear(scale)
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.predict, "add": module.add, "echo": module.echo_bytes})
    return path


def export_keras(path: str) -> str:
    """Keras 3 model exported for serving with model.export (a SavedModel)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,), name="features"),
                              keras.layers.Dense(3, activation="softmax", name="probs")])
    model.export(path, verbose=False)
    return path


def export_keras_saved_model(path: str) -> str:
    """A Keras model saved with tf.saved_model.save (TF2 style), not model.export."""
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,), name="features"),
                              keras.layers.Dense(2, name="logits")])
    tf.saved_model.save(model, path)
    return path


def keras_saved_reference(path: str, features: np.ndarray) -> dict:
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    return {k: v.numpy() for k, v in signature(**{name: tf.constant(features)}).items()}


def keras_reference(path: str, features: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(path)  # keep it referenced while its function runs
    return loaded.serve(features).numpy()


class _Identity(tf.Module):
    pass


def export_dtypes(path: str) -> str:
    """One signature per dtype, 'id_<dtype>': input x -> output y = identity(x)."""
    module = _Identity()
    signatures = {}
    for name, dtype in DTYPES.items():
        fn = tf.function(lambda x: {"y": tf.identity(x)},
                         input_signature=[tf.TensorSpec(None, dtype, name="x")])
        setattr(module, f"id_{name}", fn)
        signatures[f"id_{name}"] = fn.get_concrete_function()
    tf.saved_model.save(module, path, signatures=signatures)
    return path


def write_corrupt_version(path: str) -> str:
    os.makedirs(os.path.join(path, "variables"), exist_ok=True)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel protobuf \x00\xff\x13")
    return path


class _Sleeper(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="micros")])
    def sleep(self, micros):
        from tensorflow.python.data.experimental.ops import testing

        # take(1): the sleep dataset sleeps on every call, the one that finds the end too.
        ds = tf.data.Dataset.range(1).apply(testing.sleep(micros)).take(1)
        return {"slept": ds.reduce(tf.constant(0, tf.int64), lambda acc, _: acc + micros)}


def export_sleeper(path: str) -> str:
    """A model whose Predict takes as long as its input says (micros): for deadlines and drains.
    One call at a time per loaded version: tf.data's reduce kernel runs on one thread of its own."""
    module = _Sleeper()
    tf.saved_model.save(module, path, signatures={"serving_default": module.sleep})
    return path


class _BatchSleeper(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="micros")])
    def sleep(self, micros):
        from tensorflow.python.data.experimental.ops import testing

        ds = tf.data.Dataset.range(1).apply(testing.sleep(micros[0])).take(1)
        slept = ds.reduce(tf.constant(0, tf.int64), lambda acc, _: acc + 1)
        return {"slept": micros + 0 * slept}


def export_batch_sleeper(path: str) -> str:
    """Like the sleeper, batchable: micros is a vector, the batch sleeps for its first element."""
    module = _BatchSleeper()
    tf.saved_model.save(module, path, signatures={"serving_default": module.sleep})
    return path


def export_tf1_examples(path: str) -> str:
    """TF1 Example-based model: feature x (float) and optional bias (float, default 0).

    Signatures: 'classify' (classes "neg"/"pos" with softmax scores of [-x, x]),
    'scores_only' (classify, scores only), 'regress' (outputs = 2x + bias),
    'regress_2d' (same, shape [batch, 1]), 'predict' (predict method, x -> y).
    """
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        serialized = tf.compat.v1.placeholder(tf.string, shape=[None], name="tf_example")
        parsed = tf.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([], tf.float32),
            "bias": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})
        x, bias = parsed["x"], parsed["bias"]
        logits = tf.stack([-x, x], axis=1)
        scores = tf.nn.softmax(logits)
        batch = tf.shape(x)[0]
        classes = tf.tile(tf.constant([["neg", "pos"]]), [batch, 1])
        outputs = 2.0 * x + bias
        info = tf.compat.v1.saved_model.utils.build_tensor_info
        build = tf.compat.v1.saved_model.signature_def_utils.build_signature_def
        inputs = {"inputs": info(serialized)}
        builder = tf.compat.v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            "classify": build(inputs, {"classes": info(classes), "scores": info(scores)},
                              "tensorflow/serving/classify"),
            "scores_only": build(inputs, {"scores": info(scores)}, "tensorflow/serving/classify"),
            "regress": build(inputs, {"outputs": info(outputs)}, "tensorflow/serving/regress"),
            "regress_2d": build(inputs, {"outputs": info(tf.expand_dims(outputs, 1))},
                                "tensorflow/serving/regress"),
            "serving_default": build(inputs, {"outputs": info(outputs)}, "tensorflow/serving/regress"),
            "predict": build(inputs, {"y": info(outputs)}, "tensorflow/serving/predict"),
        })
        builder.save()
    return path


def export_keras2(path: str, mirrored: bool = False) -> str:
    """Keras 2 (tf_keras, what TF_USE_LEGACY_KERAS=1 selects) saved with tf.saved_model.save,
    optionally built under a MirroredStrategy scope (its variables are MirroredVariables)."""
    import tf_keras

    tf_keras.utils.set_random_seed(2)

    def build():
        inputs = tf_keras.Input((4,), name="features")
        hidden = tf_keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
        outputs = tf_keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
        return tf_keras.Model(inputs, outputs)

    if mirrored:
        with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
            model = build()
    else:
        model = build()
    tf.saved_model.save(model, path)
    return path
