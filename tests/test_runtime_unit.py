"""The Session runtime in-process: callables are shared across orderings and bounded."""

from __future__ import annotations

import numpy as np
from support import models

from pyserving.runtime import session as session_runtime
from pyserving.runtime.loader import RuntimeSettings, session_config


def test_callables_shared_across_orderings_and_bounded(tmp_path, monkeypatch):
    path = models.export_tf2_linear(str(tmp_path / "1"))
    servable = session_runtime.load_session(path, ["serve"], session_config(RuntimeSettings()))
    x = {"x": np.array([[1.0, 2.0]], np.float32)}
    try:
        for filters in (("y", "y_sum"), ("y_sum", "y")) * 20:
            out = servable.run("serving_default", x, filters)
            assert sorted(out) == ["y", "y_sum"]
            np.testing.assert_allclose(out["y_sum"], out["y"].sum(axis=-1))
        assert len(servable._callables) == 1
        monkeypatch.setattr(session_runtime, "MAX_CALLABLES", 2)
        for filters in (("y",), ("y_sum",), ("y", "y_sum"), ()):
            assert servable.run("serving_default", x, filters)
        assert len(servable._callables) == 2
    finally:
        servable.close()
