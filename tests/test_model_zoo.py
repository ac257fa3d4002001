"""The model families users serve (tests/support/zoo.py), exported with random weights, answer over
TF Serving's REST and gRPC APIs and the Open Inference Protocol (Triton's own client) exactly as
the same signature run in-process, and their metadata is what `saved_model_cli show` says. The
224x224 vision models: test_model_zoo_vision.py."""

from __future__ import annotations

import pytest
from support import zoo, zoo_checks

LIGHT = [name for name, family in zoo.FAMILIES.items() if not family.heavy]


light = zoo_checks.served(LIGHT)


@pytest.mark.parametrize("name", LIGHT)
def test_a_family_answers_as_in_process(light, name):
    zoo_checks.check(*light, name)
