"""Shared helpers for the benchmark scripts: percentiles, tables, JSON output, a local demo server."""

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", "bench-results"))  # e.g. $OUT on a lent GPU machine


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {f"p{p}": round(percentile(values, p) * 1000, 2) for p in (50, 95, 99)}


def print_table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def write_json(name: str, data: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps({"machine": machine(), "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                **data}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """`python -m service --demo` (or, with demo=False, `python -m service` on MODEL_DIR from extra_env; or another
    server `module`) in its own process on a free loopback port, with a throwaway STATE_DIR."""

    def __init__(self, key: str = "bench-key", extra_env: dict | None = None, demo: bool = True,
                 module: str = "service"):
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = tempfile.mkdtemp(prefix="inpaint-bench-")
        env = {**os.environ, "PORT": str(self.port), "API_KEYS": key, "STATE_DIR": self.state,
               **(extra_env or {})}
        self.log = open(Path(self.state) / "server.log", "w")
        demo_flag = ["--demo"] if demo and module == "service" else []
        self.proc = subprocess.Popen([sys.executable, "-m", module, *demo_flag], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json().get("status") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
