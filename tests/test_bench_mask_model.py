"""The mask model bench runs its whole path on the tiny random CLIPSeg and prints every figure it promises."""

import json

import pytest

from scripts.bench import mask_model
from weights.tiny import build_mask_model


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory):
    return build_mask_model(tmp_path_factory.mktemp("clipseg"), full_size=False)


def positive(record: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(record[key], (int, float)) and record[key] > 0, (key, record)


def test_mask_model_bench_prints_its_figures(tiny_clipseg, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # bench-results/ goes here
    assert mask_model.main(["--device", "cpu", "--model-dir", str(tiny_clipseg), "--runs", "1", "--warmup", "0",
                            "--load-runs", "2", "--photo", "640x480", "--extend", "64"]) == 0
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert all(line["bench"] == "mask_model" for line in lines)
    figures = [line["figure"] for line in lines]
    assert figures == ["setup", "load", "threshold", "find", "find", "request", "prepare_one_object", "extend",
                       "request"]
    by_name = {}
    for line in lines:
        by_name.setdefault(line["figure"], []).append(line)

    setup = by_name["setup"][0]
    assert setup["device"] == "cpu" and setup["dtype"] == "float32" and setup["model_mb"] > 0
    load = by_name["load"][0]
    positive(load, "first_s", "median_s", "min_s", "max_s", "first_call_s", "params_m")
    assert load["runs"] == 2 and load["peak_rss_growth_mb"] >= 0
    assert 0 < by_name["threshold"][0]["threshold"] < 1

    small, photo = by_name["find"]
    assert (small["size"], photo["size"]) == ("512x512", "640x480")
    for find in (small, photo):
        positive(find, "median_ms", "min_ms", "max_ms")
        assert find["runs"] == 1 and find["steps_match_find"] is True
        assert set(find["steps_median_ms"]) == {"shrink", "processor", "model", "threshold", "scale_back"}
        assert all(value >= 0 for value in find["steps_median_ms"].values())
        assert 0 < find["mask_share"] <= 1

    prompt_request, outpaint_request = by_name["request"]
    assert (prompt_request["input"], prompt_request["output"]) == ("640x480", "640x480")
    positive(prompt_request, "median_ms", "find_median_ms", "prepare_median_ms")
    assert prompt_request["peak_rss_growth_mb"] >= 0
    assert outpaint_request["output"] == "768x480" and outpaint_request["find_median_ms"] is None
    positive(outpaint_request, "median_ms", "resolve_rest_median_ms", "prepare_median_ms")
    assert by_name["extend"][0]["output"] == "768x480"
    positive(by_name["extend"][0], "median_ms")
    assert by_name["prepare_one_object"][0]["mask_share"] == pytest.approx(0.16, abs=0.01)
    positive(by_name["prepare_one_object"][0], "median_ms")

    assert "mask model on cpu" in out and "find 640x480" in out and "extend_canvas -> 768x480" in out
    results = tmp_path / "bench-results"
    assert [json.loads(line) for line in (results / "mask_model.jsonl").read_text().splitlines()] == lines
    assert json.loads((results / "mask_model.json").read_text())["figures"] == lines
