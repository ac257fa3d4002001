"""Metrics on their own: series follow the versions the manager knows."""

import re

from pyserving.observability.monitoring import MAX_PATH_SERIES, Metrics


def test_per_version_request_series_follow_the_known_versions():
    metrics = Metrics()
    known = [("m", 2, "AVAILABLE")]
    metrics.track_versions(lambda: known)
    metrics.record_answer("m", 1, "predict")
    metrics.record_answer("m", 2, "predict")
    text = metrics.exposition().decode()
    assert 'version="2"' in text and ':pyserving:version_request_count{API="predict",model_name="m",version="1"}' not in text
    known.append(("m", 1, "END"))
    metrics.record_answer("m", 1, "predict")
    assert ':pyserving:version_request_count{API="predict",model_name="m",version="1"} 1' in metrics.exposition().decode()


def test_path_series_are_bounded_to_the_most_recent_paths():
    """A base path whose version folders keep changing (/proc's process ids) can't grow the page."""
    metrics = Metrics()
    for i in range(MAX_PATH_SERIES + 50):
        metrics.record_load(f"/proc/{i}", 0.01, ok=False)
        metrics.record_warmup(f"/proc/{i}", 0.01, ok=True)
    page = metrics.exposition().decode()
    paths = set(re.findall(r'model_path="([^"]+)"', page))
    assert len(paths) == MAX_PATH_SERIES
    assert f"/proc/{MAX_PATH_SERIES + 49}" in paths and "/proc/0" not in paths
