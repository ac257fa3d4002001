"""The op libraries TF Serving links into its binary, registered here before any model loads.

``tensorflow_model_server`` is built with TF Text's ops and TF Decision Forests' inference ops
(its ``SUPPORTED_TENSORFLOW_OPS``), so a BERT model that tokenizes in its graph loads there
unchanged. Here their kernels come from the pip packages: each library's shared objects are
loaded with ``tf.load_op_library``, without importing the package's Python side (for TF Text:
0.13 s, 12 MiB of memory and 94 MiB of the libraries' pages, file-backed and shared between
workers; ``import tensorflow_text`` took 0.6 s).
A library built for another TensorFlow is not loaded (its kernels would not link, or worse):
the model that needs it then fails with a message that says which release would serve it.

A SavedModel whose graph uses an op nobody registered is refused before TensorFlow reads it
(``missing_ops``), once: retrying can't register an op. The message names the op and, where
known, the package that provides it.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

log = logging.getLogger("pyserving.runtime")


@dataclass(frozen=True)
class OpPackage:
    """A pip package that provides ops, and how to tell its ops by name."""

    distribution: str  # the name pip knows it by
    title: str
    module: str  # the top-level module, found without being imported
    libraries: str  # glob of its op libraries under the module's folder; "" for none loaded here
    prefixes: tuple[str, ...] = ()
    names: frozenset[str] = field(default_factory=frozenset)
    # TensorFlow's minor version: the release built for it; None: the release numbers follow TensorFlow's
    releases: dict[str, str] | None = None

    def release_for(self, tensorflow: str) -> str | None:
        """The release of this package built for this TensorFlow, if any is known."""
        minor = _minor(tensorflow)
        return f"{minor}.*" if self.releases is None else self.releases.get(minor)

    def provides(self, op: str) -> bool:
        return op in self.names or op.startswith(self.prefixes)


TF_TEXT = OpPackage(
    "tensorflow-text", "TensorFlow Text", "tensorflow_text", "python/ops/_*.so", ("TFText>",),
    frozenset({
        "CaseFoldUTF8", "ConstrainedSequence", "FastBertNormalize", "FastWordpieceTokenizeWithOffsets",
        "FindSourceOffsets", "MaxSpanningTree", "NormalizeUTF8", "NormalizeUTF8WithOffsetsMap",
        "PhraseTokenize", "RegexSplitWithOffsets", "SentenceFragments", "SentenceFragmentsV2",
        "SentencepieceDetokenizeOp", "SentencepieceIdToStringOp", "SentencepieceOp",
        "SentencepieceStringToIdOp", "SentencepieceTokenizeOp", "SentencepieceTokenizeWithOffsetsOp",
        "SentencepieceVocabSizeOp", "SplitMergeTokenizeWithOffsets", "TokenizerFromLogits",
        "UnicodeScriptTokenizeWithOffsets", "WhitespaceTokenizeWithOffsets", "WordpieceTokenizeWithOffsets"}))
TF_DF = OpPackage(
    "tensorflow-decision-forests", "TensorFlow Decision Forests", "tensorflow_decision_forests",
    "tensorflow/ops/inference/inference.so", ("SimpleML", "YggdrasilDecisionForests", "YggdrasilModel"),
    # Each release pins one TensorFlow (its wheels' metadata).
    releases={"2.16": "1.9.2", "2.17": "1.10.0", "2.18": "1.11.0", "2.19": "1.12.0"})
# Known only by name: TF Serving doesn't link them either, and a model that needs them is served
# as a Python model that loads the library itself.
OTHERS = (
    OpPackage("tensorflow-addons", "TensorFlow Addons", "tensorflow_addons", "", ("Addons>",)),
    OpPackage("tensorflow-recommenders-addons", "TensorFlow Recommenders Addons",
              "tensorflow_recommenders_addons", "", ("TFRA>",)),
    OpPackage("tensorflow-io", "TensorFlow I/O", "tensorflow_io", "", ("IO>",)),
    OpPackage("struct2tensor", "struct2tensor", "struct2tensor", "", (), frozenset({
        "DecodeProtoMap", "DecodeProtoMapV2", "DecodeProtoSparseV2", "DecodeProtoSparseV3",
        "DecodeProtoSparseV4", "EquiJoinIndices", "EquiJoinAnyIndices", "RunLengthBefore",
        "ParquetDataset"})),
)
LINKED = (TF_TEXT, TF_DF)  # what TF Serving's binary has


@dataclass
class OpLibraries:
    """What this process registered, and why a linked library is missing where it is."""

    tensorflow: str = ""
    loaded: list[str] = field(default_factory=list)  # distributions whose ops are registered
    unusable: dict[str, str] = field(default_factory=dict)  # distribution: why its ops aren't here

    def register(self) -> "OpLibraries":
        import tensorflow as tf

        self.tensorflow = tf.__version__
        for package in LINKED:
            why = self._load(package, tf)
            if why is None:
                self.loaded.append(package.distribution)
            else:
                self.unusable[package.distribution] = why
        return self

    def _load(self, package: OpPackage, tf: Any) -> str | None:
        spec = importlib.util.find_spec(package.module)
        if spec is None or not spec.submodule_search_locations:
            return "it is not installed"
        built_for = _required_tensorflow(package.distribution)
        if built_for and _minor(built_for) != _minor(self.tensorflow):
            return (f"the installed {package.distribution} {_version(package.distribution)} is built for "
                    f"TensorFlow {built_for}")
        root = list(spec.submodule_search_locations)[0]
        libraries = sorted(glob.glob(os.path.join(root, package.libraries)))
        if not libraries:
            return f"its op libraries ({package.libraries}) are not in {root}"
        for library in libraries:
            try:
                tf.load_op_library(library)
            except Exception as e:  # noqa: BLE001 - a broken install: say so, serve the rest
                log.warning("Not registering %s's ops: %s: %s", package.title, os.path.basename(library), e)
                return f"its library {os.path.basename(library)} does not load ({e})"
        return None

    def summary(self) -> str:
        """One line for the log: what is registered, and why the rest isn't."""
        loaded = [f"{d} {_version(d)}" for d in self.loaded]
        return "; ".join([f"registered {', '.join(loaded)}" if loaded else "none registered",
                          *(f"{d}: {why}" for d, why in self.unusable.items())])

    def describe_missing(self, ops: Iterable[str]) -> str:
        """Why these ops are missing, and what would provide them."""
        parts = []
        for op in sorted(ops):
            package = next((p for p in (*LINKED, *OTHERS) if p.provides(op)), None)
            if package is None:
                parts.append(f"'{op}' (not an op of TensorFlow {self.tensorflow} or of the libraries TF "
                             "Serving links in: a custom op; serve the model as a Python model that loads "
                             "its library with tf.load_op_library)")
            elif package in LINKED:
                parts.append(f"'{op}' from {package.title}, whose ops TF Serving links in; "
                             f"{self._remedy(package)}")
            else:
                parts.append(f"'{op}' from {package.title} (pip install {package.distribution}), which TF "
                             "Serving doesn't link in either: serve the model as a Python model that "
                             f"imports {package.module}")
        return "; ".join(parts)


    def _remedy(self, package: OpPackage) -> str:
        why = self.unusable.get(package.distribution, "the installed release lacks it")
        release = package.release_for(self.tensorflow)
        if release is not None:
            return (f"here {why}: pip install '{package.distribution}=={release}' (the release built "
                    f"for TensorFlow {_minor(self.tensorflow)})")
        newest = max(package.releases.items(), key=lambda kv: tuple(map(int, kv[0].split("."))))
        return (f"here {why}, and no {package.distribution} release is built for TensorFlow "
                f"{self.tensorflow} (the newest, {newest[1]}, is for TensorFlow {newest[0]}): serve it "
                f"with TensorFlow {newest[0]} and {package.distribution}=={newest[1]}, or as a Python "
                "model (docs/python_models.md)")


def missing_ops(graph_ops: Iterable[str]) -> set[str]:
    """The ops among ``graph_ops`` that no library in this process registered."""
    from tensorflow.python.framework import op_def_registry

    return {op for op in set(graph_ops) if op_def_registry.get(op) is None}


def graph_ops(meta_graph: Any) -> set[str]:
    """Every op type a MetaGraphDef's graph and its functions use."""
    graph = meta_graph.graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    function_names = {f.signature.name for f in graph.library.function}
    return ops - function_names  # a call to a function of the library is no op


def _required_tensorflow(distribution: str) -> str:
    """The TensorFlow version a package pins (``tensorflow==2.19.0``), or "" if none."""
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    for line in requires:
        requirement, _, marker = line.partition(";")
        if re.match(r"tensorflow(?![-_.\w])", requirement.strip()) and "extra" not in marker:
            match = re.search(r"(?:==|~=|>=)\s*([\d.]+)", requirement)
            if match:
                return match.group(1)
    return ""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
