"""/metrics says its format once: prometheus-client's exposition content type, as is."""

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families


def test_metrics_content_type_is_the_exposition_type_once(client):
    resp = client.get("/metrics")  # the test client is loopback: the metrics audience
    assert resp.status_code == 200
    assert resp.headers.getlist("Content-Type") == [CONTENT_TYPE_LATEST]
    assert resp.headers["Content-Type"].count("charset") == 1
    assert list(text_string_to_metric_families(resp.get_data(as_text=True)))
