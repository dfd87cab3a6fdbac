"""scripts/bench/gpu.py: refuses to run without CUDA; its measuring loop runs on the tiny model on CPU and its
JSON feeds the cost simulator."""

import pytest
import torch

from scripts import cost_sim
from scripts.bench import common, gpu


def test_without_cuda_it_exits_2_with_a_message(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_bench_loop_on_cpu_records_rows_refuses_fallback_modes_and_feeds_the_simulator(tiny_model_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    report = gpu.run_bench(tiny_model_dir, ["eager", "graphs", "compile"], sizes=[64], batches=[1, 2], steps=2,
                           runs=2, warmup=1, device="cpu", dtype=torch.float32, gpu="cpu", gpu_type="L4",
                           price=0.000222, out_name="gpu.json", safety_checker=False)
    rows = {(r["mode"], r["batch"]): r for r in report["rows"]}
    assert len(rows) == 6
    # graphs and compile do not apply on CPU: reported as unavailable, never timed as if they had run.
    for mode in ("graphs", "compile"):
        assert all("did not take effect" in rows[(mode, batch)]["error"] for batch in (1, 2))
    eager = rows[("eager", 2)]
    assert eager["error"] is None and eager["attention_processors"] == ["AttnProcessor2_0"]
    assert eager["first_call_seconds"] > 0
    assert 0 < eager["unet_seconds_p50"] <= eager["seconds_p50"] <= eager["seconds_p90"]
    # Both figures are rounded to 4 places independently, so compare within one unit of the last place.
    assert eager["s_per_image_p50"] == pytest.approx(eager["seconds_p50"] / 2, abs=1e-4)
    assert eager["max_abs_latent_diff_vs_eager"] == 0.0 and eager["latent_nan_count"] == 0
    assert eager["same_latents_twice"] is True
    assert eager["unet_gflop_per_call_per_image"] > 0
    assert eager["usd_per_1000_images"] == pytest.approx(0.000222 * eager["seconds_p50"] / 2 * 1000, abs=1e-3)
    gpu_type, table = cost_sim.load_bench_json(tmp_path / "gpu.json", "eager", 64, steps=2)
    assert gpu_type == "L4" and set(table) == {1, 2}


def test_a_container_start_and_the_servers_throughput_are_measured_the_way_the_gpu_run_does(tiny_model_dir, tmp_path,
                                                                                          monkeypatch):
    """The same code the GPU run uses, on the tiny model on CPU (the demo server serves it): every figure lands
    in the report and its JSON."""
    import json

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    report = {"rows": []}
    restore = gpu.restore_row(tiny_model_dir, report, steps=20, device="cpu", dtype=torch.float32)
    assert restore.get("error") is None and all(restore[k] > 0 for k in ("load_on_cpu_s", "to_gpu_s",
                                                                         "first_image_s", "second_image_s"))
    serving = gpu.serving_rows(tiny_model_dir, report, clients=2, jobs=1, steps=20, demo=True)
    assert [row["batch_max_images"] for row in serving] == [1, 8]
    assert all(row.get("error") is None and row["images_per_s"] > 0 for row in serving), serving
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["restore"] == restore and written["serving"] == serving
