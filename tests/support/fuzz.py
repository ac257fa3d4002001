"""What the schemathesis tests share: a schema loaded for pytest, aimed at the served model."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import strategies as st


def aimed(schema, request: pytest.FixtureRequest, served: dict[str, str]):
    """``schema`` with half the generated path parameters replaced by the served model's, so
    fuzzing reaches the model; a value schemathesis made invalid on purpose (not a string) stays."""
    # schemathesis 4.32's lazy schema renames the test node through `_nodeid`, which pytest 9.2's
    # nodes no longer have; giving it one keeps the per-operation subtests working.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid

    @schema.hook
    def flatmap_path_parameters(context, parameters):
        if not parameters:
            return st.just(parameters)
        aimed_at = {k: served.get(k, v) if type(v) is str else v for k, v in parameters.items()}
        return st.sampled_from([parameters, aimed_at])

    return schema


__all__ = ["aimed", "schemathesis"]
