"""The floor benchmark runs its stub server and the serving benchmark's own client end to end."""

import json

from scripts.bench import floor


def test_floor_measures_both_stub_servers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # bench-results/ goes here
    assert floor.main(["--jobs", "3"]) == 0
    runs = json.loads((tmp_path / "bench-results" / "floor.json").read_text())["runs"]
    assert [(run["decode"], run["jobs"]) for run in runs] == [(False, 3), (True, 3)]
    assert all(run["latency_ms"]["p50"] > 0 for run in runs)
