"""SavedModels that tokenize in their graph with TF Text's ops, as BERT-style exports do."""

from __future__ import annotations

import os
import tempfile
from typing import Callable

import tensorflow as tf
import tensorflow_text as text

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "quick", "brown", "fox", "jump", "##s",
         "##ed", "over", "lazy", "dog", "café", "naïve", "un", "##believ", "##able", "!"]


class _Words(tf.Module):
    """NFKC-normalised, case-folded, split on whitespace: the tokens, padded, and their counts."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = text.WhitespaceTokenizer()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def __call__(self, sentences):
        normalized = text.case_fold_utf8(text.normalize_utf8(sentences, "NFKC"))
        tokens = self.tokenizer.tokenize(normalized)
        return {"tokens": tokens.to_tensor(default_value=""), "counts": tokens.row_lengths()}


def export_words(path: str) -> str:
    module = _Words()
    tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


class _BertTokens(tf.Module):
    """BertTokenizer over a vocab file that the export carries as an asset: word-piece ids and mask."""

    def __init__(self, vocab_file: str) -> None:
        super().__init__()
        self.tokenizer = text.BertTokenizer(vocab_file, token_out_type=tf.int64, lower_case=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sentences")])
    def __call__(self, sentences):
        pieces = self.tokenizer.tokenize(sentences).merge_dims(-2, -1)
        ids = pieces.to_tensor(default_value=0)
        return {"input_ids": ids, "input_mask": tf.cast(ids != 0, tf.int64)}


def export_with_asset(path: str, filename: str, lines: list[str], make: Callable[[str], tf.Module]) -> str:
    """Save ``make(file)`` with its serving_default, ``file`` holding ``lines``: a scratch file the
    export copies into its assets/ (the copy is what serves)."""
    with tempfile.TemporaryDirectory() as scratch:
        file = os.path.join(scratch, filename)
        with open(file, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        module = make(file)
        tf.saved_model.save(module, path, signatures={"serving_default": module.__call__})
    return path


def export_bert_tokens(path: str) -> str:
    return export_with_asset(path, "vocab.txt", VOCAB, _BertTokens)
