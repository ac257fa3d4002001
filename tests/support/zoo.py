"""The model families users serve, each exported with random weights (no downloads), with a
request's inputs: what tests/test_model_zoo.py and benchmarks/model_zoo.py serve.

A family is (exporter, inputs): the exporter writes a version folder, the inputs are numpy arrays
by input name for its ``serving_default`` signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_text as text

from . import text_models

SENTENCES = np.array([b"The quick brown fox jumped over the lazy dog!", b"unbelievable", b"naive cafe"],
                     dtype=object)
RNG_SEED = 7


@dataclass(frozen=True)
class Family:
    export: Callable[[str], object]
    inputs: Callable[[], dict[str, np.ndarray]]
    heavy: bool = False  # 100+ MB exports: served in a test of their own
    bench_only: bool = False  # measured by benchmarks/model_zoo.py, left out of make test's time


class _BertEncoder(tf.Module):
    """Tokenized in the graph (BertTokenizer over a vocab asset), then a self-attention layer over
    the word-piece embeddings, pooled, to class probabilities: a BERT classifier in small."""

    def __init__(self, vocab_file: str, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        init = tf.random.stateless_normal
        vocab = len(text_models.VOCAB)
        self.tokenizer = text.BertTokenizer(vocab_file, token_out_type=tf.int64, lower_case=True)
        self.embedding = tf.Variable(init([vocab, width], [RNG_SEED, 1]), name="embedding")
        self.query, self.key, self.value = (tf.Variable(init([width, width], [RNG_SEED, i]), name=n)
                                            for i, n in ((2, "query"), (3, "key"), (4, "value")))
        self.classifier = tf.Variable(init([width, classes], [RNG_SEED, 5]), name="classifier")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def __call__(self, sentences):
        ids = self.tokenizer.tokenize(sentences).merge_dims(-2, -1).to_tensor(default_value=0)
        mask = tf.cast(ids != 0, tf.float32)
        x = tf.gather(self.embedding, ids)
        scores = tf.einsum("bqd,bkd->bqk", x @ self.query, x @ self.key) / 4.0
        attention = tf.nn.softmax(scores + (1.0 - mask[:, None, :]) * -1e9)
        hidden = attention @ (x @ self.value)
        pooled = tf.reduce_sum(hidden * mask[..., None], 1) / tf.maximum(tf.reduce_sum(mask, 1, keepdims=True), 1.0)
        return {"probabilities": tf.nn.softmax(pooled @ self.classifier), "input_ids": ids}


def export_bert_encoder(path: str) -> str:
    return text_models.export_with_asset(path, "vocab.txt", text_models.VOCAB, _BertEncoder)


def export_vision(name: str) -> Callable[[str], str]:
    """A Keras 3 application at 224x224, random weights, exported with ``model.export``."""
    def export(path: str) -> str:
        import keras

        keras.utils.set_random_seed(RNG_SEED)
        image = keras.Input((224, 224, 3), name="image")
        getattr(keras.applications, name)(weights=None, input_tensor=image).export(path, verbose=False)
        return path
    return export


def vision_inputs() -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(RNG_SEED).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)}


def export_text_classifier(path: str) -> str:
    """Keras 3: TextVectorization (a vocabulary adapted from a corpus: a lookup table) and a
    StringLookup over the labels, around an embedding classifier."""
    import keras

    keras.utils.set_random_seed(RNG_SEED)
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=8)
    vectorize.adapt([s.decode() for s in SENTENCES] + ["a fox and a dog", "the dog sleeps"])
    words = keras.Input(shape=(), dtype="string", name="text")
    x = keras.layers.Embedding(40, 8)(vectorize(words))
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(words, keras.layers.Softmax()(logits))
    model.export(path, verbose=False)
    return path


class _Recommender(tf.Module):
    """User ids (strings, a hash table from a vocab asset) and item ids (int64, a static hash
    table) to embeddings; scores of every candidate and the top ones."""

    USERS = ["alice", "bob", "carol", "dave"]
    ITEMS = [1001, 1002, 1003, 1004, 1005, 1006]

    def __init__(self, users_file: str, width: int = 8) -> None:
        super().__init__()
        init = tf.random.stateless_normal
        self.users = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
            users_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER), default_value=len(self.USERS))
        self.items = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.ITEMS, tf.int64), tf.range(len(self.ITEMS), dtype=tf.int64)),
            default_value=len(self.ITEMS))
        self.user_embedding = tf.Variable(init([len(self.USERS) + 1, width], [RNG_SEED, 6]), name="users")
        self.item_embedding = tf.Variable(init([len(self.ITEMS) + 1, width], [RNG_SEED, 7]), name="items")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None, None], tf.int64, name="candidates")])
    def __call__(self, user_id, candidates):
        user = tf.gather(self.user_embedding, self.users.lookup(user_id))
        items = tf.gather(self.item_embedding, self.items.lookup(candidates))
        scores = tf.einsum("bd,bkd->bk", user, items)
        top = tf.math.top_k(scores, k=tf.minimum(3, tf.shape(scores)[1]))
        return {"scores": scores, "top_items": tf.gather(candidates, top.indices, batch_dims=1)}


def export_recommender(path: str) -> str:
    return text_models.export_with_asset(path, "users.txt", _Recommender.USERS, _Recommender)


class _MultiOutput(tf.Module):
    """Float features in; a string label, an int64 class id, float scores and an int64 count out."""

    LABELS = ["cat", "dog", "bird"]

    def __init__(self) -> None:
        super().__init__()
        self.weights = tf.Variable(tf.random.stateless_normal([4, 3], [RNG_SEED, 8]), name="weights")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="features")])
    def __call__(self, features):
        scores = tf.nn.softmax(features @ self.weights)
        class_id = tf.argmax(scores, axis=1, output_type=tf.int64)
        return {"label": tf.gather(tf.constant(self.LABELS), class_id), "class_id": class_id,
                "scores": scores, "positive": tf.math.count_nonzero(features > 0, axis=1)}


def export_multi_output(path: str) -> str:
    module = _MultiOutput()
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def _examples() -> dict[str, np.ndarray]:
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString()
        for x in (0.5, -1.5, 3.0)]
    return {"inputs": np.array(examples, dtype=object)}


def _families() -> dict[str, Family]:
    from . import models

    return {
        "bert_encoder": Family(export_bert_encoder, lambda: {"text": SENTENCES}),
        "text_classifier": Family(export_text_classifier, lambda: {"text": SENTENCES}),
        "recommender": Family(export_recommender, lambda: {
            "user_id": np.array([b"alice", b"carol", b"stranger"], dtype=object),
            "candidates": np.array([[1001, 1003, 1005, 1006], [1002, 1004, 1001, 9999],
                                    [1006, 1005, 1004, 1003]], np.int64)}),
        "multi_output": Family(export_multi_output, lambda: {
            "features": np.random.default_rng(RNG_SEED).normal(size=(5, 4)).astype(np.float32)}),
        "tf1_examples": Family(models.export_tf1_examples, _examples),
        "resnet50": Family(export_vision("ResNet50"), vision_inputs, heavy=True, bench_only=True),
        "mobilenet_v3": Family(export_vision("MobileNetV3Small"), vision_inputs, heavy=True),
        # Its export and load cost 15 s of make test's 10 minutes; ResNet50 and MobileNetV3 cover the kind.
        "efficientnet": Family(export_vision("EfficientNetB0"), vision_inputs, heavy=True, bench_only=True),
    }


FAMILIES = _families()
