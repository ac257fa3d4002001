"""SavedModels through ``tf.saved_model.load``: the fallback for exports a Session can't run.

Keras 3 models saved with ``tf.saved_model.save`` load into a Session but their
variables are not restored there; TF2's object-based loader runs them. Its
signature functions check inputs against the declared shapes, which the
Session runtime leaves to the graph.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from ..errors import Code, ServingError
from .servable import first_line, run_error, runnable_signatures


class FunctionServable:
    """One version loaded by TF2's object loader; signatures run as concrete functions."""

    runtime = "function"

    def __init__(self, path: str, signature_defs: Mapping[str, Any], loaded: Any) -> None:
        self.path = path
        self._signature_defs = signature_defs
        self._loaded = loaded  # keeps the functions' variables alive
        self._functions = dict(loaded.signatures)
        self.signatures = {k: s for k, s in runnable_signatures(signature_defs).items()
                           if k in self._functions}

    @property
    def signature_defs(self) -> Mapping[str, Any]:
        return self._signature_defs

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray],
            output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        function = self._functions[signature_key]
        try:
            # Explicit conversion is cheaper than the signature's own argument conversion.
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except (tf.errors.OpError, UnicodeDecodeError) as e:
            raise run_error(e) from None
        except (TypeError, ValueError) as e:
            raise ServingError.invalid_argument(str(e)) from None
        names = output_filter or list(result)
        return {n: result[n].numpy() for n in names}

    def close(self) -> None:
        self._functions.clear()
        self._loaded = None


def load_function(path: str, tags: Sequence[str], signature_defs: Mapping[str, Any]) -> FunctionServable:
    try:
        loaded = tf.saved_model.load(path, tags=list(tags))
    except Exception as e:  # TF raises many types for broken exports; all are load failures
        raise ServingError(Code.INTERNAL, f"Failed to load SavedModel at {path}: {first_line(e)}") from e
    return FunctionServable(path, signature_defs, loaded)
