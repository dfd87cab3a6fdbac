"""SPEND_CAP_USD_PER_DAY over real HTTP: once the UTC day's cost reaches it new jobs get 429 with Retry-After to
the next UTC day, jobs already taken in finish, /usage and /metrics show it, and the next day opens again; on
Modal the day's cost is shared by every web container."""

import threading
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from pydantic import ValidationError

from schemas import InpaintParams
from service.config import Settings
from service.http.app import create_app
from service.jobs.errors import Throttled
from service.jobs.identity import key_owner
from tests.images import box_mask, gradient_image, png_bytes
from tests.servers import KEY_A, ApiServer, SlowInpainter, api_server, free_port, make_settings
from tests.test_metrics import scrape
from tests.test_modal_races import deployment  # noqa: F401 (the fixture)
from tests.test_service import BODY, SLUG, wait_terminal

# A tiny-model job takes about a second of CPU: at 1000 USD per "L4 second" one job costs far more than the cap.
PRICED = {"gpu_type": "L4", "gpu_price_per_second": "L4=1000"}
CAP = 1.0


def today_at(hour: int, minute: int, second: int = 0, days: int = 0) -> float:
    now = datetime.now(timezone.utc)
    return (now.replace(hour=hour, minute=minute, second=second, microsecond=0) + timedelta(days=days)).timestamp()


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "ten"])
def test_a_spend_cap_must_be_a_finite_positive_number(monkeypatch, value):
    monkeypatch.setenv("SPEND_CAP_USD_PER_DAY", value)
    with pytest.raises(ValidationError, match="spend_cap_usd_per_day"):
        Settings()


def test_an_empty_spend_cap_is_no_cap(monkeypatch):
    monkeypatch.setenv("SPEND_CAP_USD_PER_DAY", "")
    assert Settings().spend_cap_usd_per_day is None


def test_the_day_s_spend_reaching_the_cap_refuses_new_jobs_until_the_next_utc_day(tmp_path, tiny_model_dir,
                                                                                  inpainter):
    gate = threading.Event()
    settings = make_settings(tmp_path, tiny_model_dir, spend_cap_usd_per_day=CAP, rate_limit_per_second=0, **PRICED)
    with api_server(settings, lambda: SlowInpainter(inpainter, gate=gate)) as server, \
            httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        admission = server.app.state.jobs.admission
        running = http.post(f"/v2/{SLUG}", json=BODY).json()["request_id"]
        queued = http.post(f"/v2/{SLUG}", json={**BODY, "seed": 7}).json()["request_id"]
        assert http.get(f"/v2/requests/{queued}/status").json()["status"] == "QUEUED"
        gate.set()
        ended = [wait_terminal(http, job_id) for job_id in (running, queued)]  # taken in before the cap: they run
        assert [body["status"] for body in ended] == ["COMPLETED", "COMPLETED"]
        spent = sum(body["metrics"]["cost_usd"] for body in ended)
        assert spent >= CAP

        admission.clock = lambda: today_at(23, 59, 0)  # a minute before the next UTC day
        for path in (f"/v2/{SLUG}", f"/v1/{SLUG}"):
            refused = http.post(path, json=BODY)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "60"
            midnight = datetime.fromtimestamp(today_at(0, 0, days=1), timezone.utc)
            assert refused.headers["x-rate-limit-reset-at-utc"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
            assert "spend cap of 1 USD per UTC day" in refused.json()["error"]

        usage = http.get("/usage").json()
        assert usage["spend_cap_usd_per_day"] == CAP
        assert usage["spend_today_usd"] == pytest.approx(spent, rel=1e-6)
        metrics = scrape(server.url)
        assert metrics[("inpaint_spend_cap_usd_per_day",)] == CAP
        assert metrics[("inpaint_spend_today_usd",)] == pytest.approx(spent, rel=1e-6)
        assert metrics[("inpaint_requests_refused_total", ("reason", "spend_cap"))] == 2

        admission.clock = lambda: today_at(0, 0, 1, days=1)  # the next UTC day: nothing spent yet
        reopened = http.post(f"/v2/{SLUG}", json=BODY)
        assert reopened.status_code == 200, reopened.text
        assert wait_terminal(http, reopened.json()["request_id"])["status"] == "COMPLETED"


def test_without_a_price_the_cap_never_triggers(tmp_path, tiny_model_dir, inpainter):
    settings = make_settings(tmp_path, tiny_model_dir, spend_cap_usd_per_day=0.000001, rate_limit_per_second=0)
    with api_server(settings, lambda: inpainter) as server, \
            httpx.Client(base_url=server.url, headers={"x-api-key": KEY_A}, timeout=60) as http:
        for _ in range(2):
            response = http.post(f"/v2/{SLUG}", json=BODY)
            assert response.status_code == 200, response.text
            assert wait_terminal(http, response.json()["request_id"])["metrics"]["cost_usd"] is None
        assert http.get("/usage").json()["spend_today_usd"] == 0


def test_on_modal_every_web_container_sees_the_day_s_spend(deployment):  # noqa: F811
    d = deployment()
    for name, value in {**PRICED, "spend_cap_usd_per_day": CAP}.items():
        setattr(d.settings, name, value)
    assert d.wait_end(d.submit()).status.value == "COMPLETED"  # ended by a GPU container: its cost is shared
    other = create_app(d._backend(spawn=d._spawn))  # another web container over the same Dicts
    server = ApiServer(other, free_port()).start()
    try:
        refused = httpx.post(f"{server.url}/v2/{SLUG}", json=BODY, headers={"x-api-key": KEY_A}, timeout=30)
    finally:
        server.stop()
    assert refused.status_code == 429 and "spend cap" in refused.json()["error"]
    assert 0 < int(refused.headers["retry-after"]) <= 86400
    with pytest.raises(Throttled):  # and the first web container too
        d.web.admission.admit(key_owner(KEY_A), InpaintParams(prompt="a chair"), png_bytes(gradient_image()),
                              png_bytes(box_mask()), "http://test")
