"""A SavedModel version folder: its MetaGraphDef, and the runtime that serves it.

Like TF Serving's SavedModelBundle, a version runs in its own Session
(``session.py``). The rare export that loads there but can't run there falls
back to TF2's object loader (``function.py``), and the log says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from ..errors import Code, ServingError
from .op_libraries import OpLibraries, graph_ops, missing_ops
from .servable import Servable

log = logging.getLogger("pyserving.runtime")


def read_meta_graph(path: str, tags: Sequence[str]) -> Any:
    """The MetaGraphDef whose tag set equals ``tags``, as TF Serving picks it."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    pb, pbtxt = os.path.join(path, "saved_model.pb"), os.path.join(path, "saved_model.pbtxt")
    saved_model = saved_model_pb2.SavedModel()
    try:
        if os.path.exists(pb):
            with open(pb, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif os.path.exists(pbtxt):
            with open(pbtxt, encoding="utf-8") as f:
                text_format.Parse(f.read(), saved_model)
        else:
            raise ServingError(Code.NOT_FOUND,
                               f"SavedModel file does not exist at: {path}/{{saved_model.pbtxt|saved_model.pb}}")
    except ServingError:
        raise
    except Exception as e:  # DecodeError, ParseError, OSError: all mean a corrupt export
        raise ServingError(Code.DATA_LOSS, f"Cannot parse the SavedModel at {path}: {e}") from e
    wanted = set(tags)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == wanted:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ServingError(
        Code.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(sorted(wanted))} }} "
        f"in {path}; the SavedModel has tag sets {found}. "
        "To inspect them, use the SavedModel CLI: `saved_model_cli show --dir PATH`")


def load_saved_model(path: str, tags: Sequence[str], session_config: Any,
                     keep_meta_graph: bool = False, libraries: OpLibraries | None = None) -> Servable:
    """Load a version into a Session, or through tf.saved_model.load where a Session can't run it."""
    meta_graph = read_meta_graph(path, tags)
    missing = missing_ops(graph_ops(meta_graph))
    if missing:  # TensorFlow would say "Op type not registered" and nothing of what would serve it
        libraries = libraries or OpLibraries(tensorflow=_tensorflow_version())
        raise ServingError.cannot_load(
            f"The SavedModel at {path} uses ops this server has not registered: "
            f"{libraries.describe_missing(missing)}", "no retry registers an op")
    from .session import NotRunnableInSession, load_session

    try:
        return load_session(path, tags, session_config, keep_meta_graph)
    except NotRunnableInSession as e:
        log.info("Serving %s with tf.saved_model.load: %s", path, e)
    from .function import load_function

    return load_function(path, tags, meta_graph.signature_def)


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__
