"""Metrics on their own: series follow the versions the manager knows."""

from pyserving.monitoring import Metrics


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
