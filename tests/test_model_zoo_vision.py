"""Keras 3 vision models at 224x224 (MobileNetV3, random weights; ResNet50 and EfficientNet, whose
exports cost make test about 30 s more, are served and compared by benchmarks/model_zoo.py) answer
as in-process over every API (tests/support/zoo_checks.py). A file of its own: the export takes
seconds, and the suite's processes take a file each."""

from __future__ import annotations

import pytest
from support import zoo, zoo_checks

HEAVY = [name for name, family in zoo.FAMILIES.items() if family.heavy and not family.bench_only]


heavy = zoo_checks.served(HEAVY)


@pytest.mark.parametrize("name", HEAVY)
def test_a_vision_model_at_224_answers_as_in_process(heavy, name):
    zoo_checks.check(*heavy, name)
