"""What a new user sees when starting the server goes wrong: one clear message, no traceback.

The server runs as `python -m service` in a subprocess, as `make serve` runs it."""

import os
import signal
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from service.config import Settings
from tests.conftest import REPO
from tests.servers import KEY_A, api_server, free_port, make_settings


def run_service(tmp_path, *args, **env) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "STATE_DIR", "MODEL_DIR", "PORT")}
    environ.update({"PYTHONPATH": str(REPO), "STATE_DIR": str(tmp_path / "state"), **env})
    return subprocess.Popen([sys.executable, "-m", "service", *args], cwd=tmp_path, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=120)
    return proc.returncode, output


@pytest.mark.parametrize("value, keys", [
    ("k1,k2", ["k1", "k2"]),
    (" k1 , k2 ,", ["k1", "k2"]),
    ("k1 k2", ["k1", "k2"]),
    ("k1\nk2\tk3", ["k1", "k2", "k3"]),
    ('["k1", "k2"]', ["k1", "k2"]),
    ("sk-local-Ab_9.x~", ["sk-local-Ab_9.x~"]),
    ("k1,k1", ["k1"]),
])
def test_api_keys_forms(monkeypatch, value, keys):
    monkeypatch.setenv("API_KEYS", value)
    assert Settings().api_keys == keys


@pytest.mark.parametrize("value", ["k1;k2", '["k1",', "[1, 2]", "k1 k2,k3", "'k1'", "kä"])
def test_ambiguous_api_keys_are_refused(monkeypatch, value):
    monkeypatch.setenv("API_KEYS", value)
    with pytest.raises(ValueError, match="JSON list"):
        Settings()


def test_bad_api_keys_at_startup(tmp_path):
    code, output = finished(run_service(tmp_path, API_KEYS='["k1","k2"'))
    assert code != 0 and "Traceback" not in output
    assert "API_KEYS" in output and '["k1","k2"]' in output  # names the setting and shows a valid form


def test_unusable_state_dir(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    code, output = finished(run_service(tmp_path, "--demo", STATE_DIR=str(tmp_path / "afile" / "state")))
    assert code != 0 and "Traceback" not in output
    assert output.startswith("error: STATE_DIR=") and "is a file rather than a directory" in output
    assert "set STATE_DIR to a directory" in output
    assert not (tmp_path / ".models").exists()  # refused before building anything


@pytest.mark.parametrize("args, command", [(["--demo"], "make demo"), ([], "make serve")])
def test_port_in_use(tmp_path, args, command):
    """The advice names the command that was run: `make serve` would load the 2.1 GB model a demo user lacks."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = finished(run_service(tmp_path, *args, PORT=str(port), MODEL_DIR=str(tmp_path / "no-model")))
    assert code != 0 and "Traceback" not in output
    assert f"port {port} on 127.0.0.1 is already in use" in output and f"PORT={port + 1} {command}" in output
    assert "serving on" not in output and not (tmp_path / "no-model").exists()  # refused before the model


def test_no_weights_and_no_hub_fails_fast(tmp_path):
    closed = free_port()  # nothing listens there: the hub check gets "connection refused" at once
    environ = {"MODEL_DIR": str(tmp_path / "no-model"), "HF_ENDPOINT": f"http://127.0.0.1:{closed}",
               "HF_HUB_OFFLINE": "0", "PORT": str(free_port())}
    code, output = finished(run_service(tmp_path, **environ))
    assert code != 0 and "Traceback" not in output
    assert f"no model in MODEL_DIR={tmp_path / 'no-model'}" in output and "unreachable" in output
    assert "WARNING" not in output and "Retry" not in output  # one try, no retry storm


def test_startup_says_how_many_keys(tmp_path, tiny_model_dir):
    port = free_port()
    proc = run_service(tmp_path, MODEL_DIR=str(tiny_model_dir), API_KEYS='["k1","k2"]', PORT=str(port))
    guard = threading.Timer(180, proc.kill)  # only if it never gets there; the loop ends on the log line
    guard.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "mask model loaded" in line:  # the last step of loading the model
                break
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
    finally:
        guard.cancel()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    text = "".join(lines)
    assert "2 API keys configured (API_KEYS)" in text and "serving on" in text
    assert "k1" not in text and "k2" not in text  # keys are never logged
    assert "torchvision" not in text  # transformers' import-time notice about its PIL fallback is filtered


def test_wrong_key_says_where_keys_come_from(tmp_path, tiny_model_dir, inpainter):
    with api_server(make_settings(tmp_path, tiny_model_dir), lambda: inpainter) as srv:
        wrong = httpx.get(srv.url + "/v2/requests/x/status", headers={"x-api-key": "sk-wrong"})
        missing = httpx.get(srv.url + "/v2/requests/x/status")
    for response in (wrong, missing):
        assert response.status_code == 401
        message = response.json()["error"]
        assert "API_KEYS" in message and "STATE_DIR/api_key" in message
        assert KEY_A not in message and "sk-wrong" not in message
    assert wrong.json()["error"].startswith("invalid API key")
    assert missing.json()["error"].startswith("missing API key")
