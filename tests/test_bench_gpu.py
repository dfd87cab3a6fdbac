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
    report = gpu.run_bench(tiny_model_dir, ["eager", "compile"], sizes=[64], batches=[1, 2], steps=2,
                           runs=2, warmup=1, device="cpu", dtype=torch.float32, gpu="cpu", gpu_type="L4",
                           price=0.000222, out_name="gpu.json", safety_checker=False)
    rows = {(r["mode"], r["batch"]): r for r in report["rows"]}
    assert len(rows) == 4
    # compile does not apply on CPU: reported as unavailable, never timed as if it had run.
    assert "did not take effect" in rows[("compile", 1)]["error"]
    assert "did not take effect" in rows[("compile", 2)]["error"]
    eager = rows[("eager", 2)]
    assert eager["error"] is None and eager["attention_processors"] == ["AttnProcessor2_0"]
    assert 0 < eager["unet_seconds_p50"] <= eager["seconds_p50"] <= eager["seconds_p90"]
    # Both figures are rounded to 4 places independently, so compare within one unit of the last place.
    assert eager["s_per_image_p50"] == pytest.approx(eager["seconds_p50"] / 2, abs=1e-4)
    assert eager["max_abs_latent_diff_vs_eager"] == 0.0 and eager["latent_nan_count"] == 0
    assert eager["unet_gflop_per_call_per_image"] > 0
    assert eager["usd_per_1000_images"] == pytest.approx(0.000222 * eager["seconds_p50"] / 2 * 1000, abs=1e-3)
    gpu_type, table = cost_sim.load_bench_json(tmp_path / "gpu.json", "eager", 64, steps=2)
    assert gpu_type == "L4" and set(table) == {1, 2}
