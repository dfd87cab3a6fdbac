"""GET /metrics over real HTTP: the Prometheus text format, totals that move as jobs end, who may read it, and on
Modal totals read from the shared store (so every web container reports the same), in a bounded number of calls."""

import threading

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.http.app import create_app
from tests.servers import KEY_A, KEY_B, ApiServer, SlowInpainter, api_server, free_port, make_settings
from tests.test_modal_races import deployment  # noqa: F401 (the fixture)
from tests.test_service import BODY, SLUG, wait_terminal

TOKEN = "scrape-token-1"


def scrape(url: str, **headers: str) -> dict[tuple, float]:
    """The samples of GET /metrics, parsed by prometheus_client's own parser: {(name, labels...): value}."""
    response = httpx.get(f"{url}/metrics", headers=headers or {"x-api-key": KEY_A}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def jobs_ended(samples: dict, status: str, failure: str = "") -> float:
    return samples.get(("inpaint_jobs_total", ("failure", failure), ("status", status)), 0.0)


@pytest.fixture
def gated(tmp_path, tiny_model_dir, inpainter):
    """An embedded server whose worker holds each job until `gate` is set; priced (L4) and KEY_B without credits."""
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, gpu_type="L4", key_credits={KEY_B: 0},
                             metrics_token=TOKEN, rate_limit_per_second=0)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as server:
        yield server, gate
    gate.set()


def test_metrics_parse_and_move_as_jobs_complete_fail_and_are_refused(gated):
    server, gate = gated
    before = scrape(server.url)
    assert jobs_ended(before, "COMPLETED") == 0 and before[("inpaint_queue_depth",)] == 0
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        running = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        queued = http.post(f"/v2/{SLUG}", json={**BODY, "seed": 7}).json()["request_id"]
        assert scrape(server.url)[("inpaint_queue_depth",)] == 2
        assert http.post(f"/v2/requests/{queued}/cancel").status_code == 200
        refused = httpx.post(f"{server.url}/v2/{SLUG}", json=BODY, headers={"x-api-key": KEY_B}, timeout=30)
        assert refused.status_code == 406
        gate.set()
        assert wait_terminal(http, running)["status"] == "COMPLETED"
        cost = http.get(f"/v2/requests/{running}/status").json()["metrics"]
    after = scrape(server.url)
    assert jobs_ended(after, "COMPLETED") == 1
    assert jobs_ended(after, "FAILED", "cancelled") == 1
    assert after[("inpaint_queue_depth",)] == 0
    assert after[("inpaint_requests_refused_total", ("reason", "credits"))] == 1
    assert after[("inpaint_requests_refused_total", ("reason", "spend_cap"))] == 0
    assert after[("inpaint_inference_seconds_count",)] == 1  # the cancelled job never ran
    assert after[("inpaint_batch_size_count",)] == 1
    assert after[("inpaint_batch_size_bucket", ("le", "1.0"))] == 1
    assert after[("inpaint_gpu_seconds_total",)] == pytest.approx(cost["gpu_seconds"], abs=1e-4)
    assert after[("inpaint_cost_usd_total",)] == pytest.approx(cost["cost_usd"], abs=1e-8)
    assert after[("inpaint_spend_today_usd",)] == pytest.approx(cost["cost_usd"], abs=1e-8)
    assert after[("inpaint_cold_start_jobs_total",)] >= 1  # the first job waited for the model to load
    assert ("inpaint_spend_cap_usd_per_day",) not in after  # no cap set
    # this process's request latency, by route template (a job id makes no new series)
    assert after[("inpaint_request_duration_seconds_count", ("method", "POST"), ("route", "/v2/{slug}"),
                  ("status", "200"))] == 2
    status_polls = [key for key in after if key[0] == "inpaint_request_duration_seconds_count"
                    and ("route", "/v2/requests/{request_id}/status") in key]
    assert status_polls and not any(running in str(key) for key in after)


def test_metrics_take_any_api_key_or_the_metrics_token_and_nothing_else(gated):
    server, _ = gated
    for headers in ({"x-api-key": KEY_A}, {"authorization": f"Bearer {KEY_B}"},
                    {"authorization": f"Bearer {TOKEN}"}):
        assert "inpaint_jobs" in httpx.get(f"{server.url}/metrics", headers=headers).text
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"authorization": TOKEN}):
        response = httpx.get(f"{server.url}/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert "API key" in response.json()["error"] and "inpaint_" not in response.text
    # the token reads metrics, nothing else
    assert httpx.get(f"{server.url}/usage", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 401


def test_modal_web_containers_report_the_same_totals_from_the_shared_store(deployment):  # noqa: F811
    d = deployment()
    d.settings.gpu_type = "L4"
    servers = [ApiServer(create_app(d._backend(spawn=d._spawn)), free_port()).start() for _ in range(2)]
    try:
        first = d.submit()
        assert d.wait_end(first).status.value == "COMPLETED"
        # the totals document and the queue depth (at most once a second per container), plus slack of one:
        # the same bound after one job and after three
        assert scrape_cost(d, servers[0].url) <= 3
        for _ in range(2):
            assert d.wait_end(d.submit()).status.value == "COMPLETED"
        assert scrape_cost(d, servers[0].url) <= 3, "a scrape's store calls grow with the jobs"
        totals = [shared(scrape(server.url)) for server in servers]
    finally:
        for server in servers:
            server.stop()
    assert totals[0] == totals[1]
    assert totals[0][("inpaint_jobs_total", ("failure", ""), ("status", "COMPLETED"))] == 3
    assert totals[0][("inpaint_inference_seconds_count",)] == 3
    assert totals[0][("inpaint_cost_usd_total",)] > 0


def scrape_cost(d, url: str) -> int:
    """Store calls (round trips, plus entries the server counted or streamed) one scrape costs on the Dicts."""
    before = sum(stand_in.cost() for stand_in in d.dicts.values())
    scrape(url)
    return sum(stand_in.cost() for stand_in in d.dicts.values()) - before


def shared(samples: dict) -> dict:
    """The series read from the shared store (the request latency histogram is each container's own)."""
    return {key: value for key, value in samples.items() if not key[0].startswith("inpaint_request_duration")}
