"""scripts/cost_sim.py against cases with known answers (queueing theory and hand-worked timelines)."""

import random
import statistics

import pytest

from scripts import cost_sim
from scripts.cost_sim import Knobs, simulate

PRICE = 0.001  # $/s, a round number so costs read as seconds


def test_one_container_constant_load():
    """A request every 2 s, 0.5 s each, one warm container: no waiting, billed for the whole hour, 75% idle."""
    arrivals = [2.0 * i for i in range(1800)]
    knobs = Knobs(min_containers=1, max_containers=1, scaledown_window=60, cold_start=10)
    r = simulate(arrivals, lambda n: 0.5 * n, knobs, PRICE, duration=3600)
    assert r.images == 1800 and r.refused == 0 and r.cold_starts == 0
    assert max(r.latencies) == pytest.approx(0.5) and min(r.latencies) == pytest.approx(0.5)
    assert r.billed_seconds == pytest.approx(3600)
    assert r.cost == pytest.approx(3600 * PRICE)
    assert r.idle_share == pytest.approx(0.75)
    assert r.usd_per_1000_images == pytest.approx(3600 * PRICE / 1800 * 1000)


def test_mm1_mean_wait_matches_theory():
    """Poisson arrivals (rate 0.5/s), exponential service (mean 1 s), one warm container: rho = 0.5.

    M/M/1 mean wait in queue Wq = rho / (mu - lambda) = 1.0 s. Tolerance: successive waits are
    correlated, so the standard error comes from batch means (20 batches of 5000; at rho 0.5 the
    wait's correlation dies out within a few dozen customers, far inside a batch). We ask for 4
    standard errors (a true model fails this about once in 16000 seeds) and check that the error
    bar itself is tight (under 5% of Wq) so the test has teeth.
    """
    rng = random.Random(1)
    lam, mu, n = 0.5, 1.0, 100_000
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(lam)
        arrivals.append(t)
    knobs = Knobs(min_containers=1, max_containers=1, scaledown_window=3600, max_queue_depth=0)
    r = simulate(arrivals, lambda k: sum(rng.expovariate(mu) for _ in range(k)), knobs, PRICE)
    waits = r.waits[1000:]  # drop the warm-up from an empty queue
    size = len(waits) // 20
    batches = [statistics.fmean(waits[i * size:(i + 1) * size]) for i in range(20)]
    se = statistics.stdev(batches) / len(batches) ** 0.5
    expected = (lam / mu) / (mu - lam)
    assert se < 0.05 * expected
    assert abs(statistics.fmean(waits) - expected) < 4 * se
    # and Little's law on the sojourn time W = 1 / (mu - lambda) = 2 s
    assert statistics.fmean(r.latencies[1000:]) == pytest.approx(1 / (mu - lam), rel=0.1)


def test_md1_wait_through_the_table_path():
    """Deterministic service from a seconds-per-image table: M/D/1, Wq = rho / (2 mu (1 - rho)) = 0.5 s at rho 0.5."""
    rng = random.Random(2)
    arrivals = cost_sim.poisson_trace(0.5 * 3600, 40_000 / 0.5 / 3600, rng)
    knobs = Knobs(min_containers=1, max_containers=1, scaledown_window=3600, max_queue_depth=0)
    r = simulate(arrivals, cost_sim.table_service({1: 1.0}), knobs, PRICE)
    assert statistics.fmean(r.waits[500:]) == pytest.approx(0.5, rel=0.08)


def test_zero_traffic_costs_min_containers_times_the_time():
    r = simulate([], lambda n: n, Knobs(min_containers=2, max_containers=4), PRICE, duration=3600)
    assert r.billed_seconds == pytest.approx(2 * 3600) and r.cost == pytest.approx(7.2)
    assert r.idle_share == 1.0 and r.cold_starts == 0
    r = simulate([], lambda n: n, Knobs(min_containers=0), PRICE, duration=3600)
    assert r.billed_seconds == 0 and r.cost == 0


def test_scale_to_zero_bills_nothing_after_the_window():
    """One request, min 0: cold start 10 s + 1 s of work + the 60 s window, then nothing for the rest of the hour."""
    knobs = Knobs(min_containers=0, scaledown_window=60, cold_start=10)
    r = simulate([100.0], lambda n: 1.0, knobs, PRICE, duration=3600)
    assert r.cold_starts == 1 and r.latencies == [pytest.approx(11.0)]
    assert r.billed_seconds == pytest.approx(10 + 1 + 60)
    assert r.idle_share == pytest.approx(60 / 71)
    # The next request after the window pays a cold start again; one inside it does not.
    r = simulate([0.0, 80.0], lambda n: 1.0, knobs, PRICE)
    assert r.cold_starts == 2
    r = simulate([0.0, 60.0], lambda n: 1.0, knobs, PRICE)
    assert r.cold_starts == 1 and r.billed_seconds == pytest.approx(10 + 1 + 49 + 1 + 60)


def test_batches_fill_or_wait_then_go():
    """@modal.batched: a full batch goes at once; a partial one goes when the oldest input has waited wait_ms."""
    knobs = Knobs(min_containers=1, max_containers=1, batch_size=4, batch_wait=0.1)
    service = cost_sim.table_service({1: 1.0, 4: 0.5})
    r = simulate([0.0] * 4, service, knobs, PRICE)
    assert r.latencies == [pytest.approx(2.0)] * 4  # one batch of 4 at 0.5 s per image
    r = simulate([0.0, 0.05], service, knobs, PRICE)
    # a batch of 2 opens at 0.1 s; 2 images at the interpolated 0.8333 s each
    assert sorted(r.latencies) == [pytest.approx(0.1 + 2 * (1 - 0.5 / 3) - 0.05), pytest.approx(0.1 + 2 * (1 - 0.5 / 3))]


def test_queue_cap_refuses_and_max_containers_queues():
    knobs = Knobs(min_containers=1, max_containers=1, max_queue_depth=2)
    r = simulate([0.0] * 5, lambda n: 1.0, knobs, PRICE)
    assert r.refused == 3 and r.images == 2
    r = simulate([0.0] * 5, lambda n: 1.0, Knobs(min_containers=1, max_containers=1, max_queue_depth=0), PRICE)
    assert r.refused == 0 and sorted(r.latencies) == pytest.approx([1, 2, 3, 4, 5])


def test_buffer_containers_start_a_spare_while_busy():
    knobs = Knobs(min_containers=0, max_containers=4, buffer_containers=1, cold_start=10)
    r = simulate([0.0], lambda n: 1.0, knobs, PRICE)
    assert r.cold_starts == 2


def test_bench_json_and_cli_sweep(tmp_path, capsys):
    bench = {"gpu_type": "L4", "rows": [
        {"mode": "eager", "size": 512, "steps": 20, "batch": 1, "s_per_image_p50": 2.0, "error": None},
        {"mode": "eager", "size": 512, "steps": 20, "batch": 4, "s_per_image_p50": 1.5, "error": None},
        {"mode": "compile", "size": 512, "steps": 20, "batch": 1, "s_per_image_p50": 1.0, "error": None},
    ]}
    path = tmp_path / "gpu.json"
    path.write_text(__import__("json").dumps(bench))
    assert cost_sim.load_bench_json(path, "eager", 512, 40) == ("L4", {1: 4.0, 4: 3.0})
    png = tmp_path / "sweep.png"
    assert cost_sim.main(["--bursts", "2", "20", "--gpu-json", str(path), "--sweep", "--windows", "2,60",
                          "--max-containers-grid", "1,2", "--latency-target", "1000", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "L4 at $0.000222/s" in out and "recommended for p95 <= 1000s" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_exit_2_with_the_parameter_named(tmp_path, capsys):
    assert cost_sim.main(["--gpu", "L4"]) == 2
    assert "no published s/image for L4" in capsys.readouterr().err
    assert cost_sim.main(["--scaledown-window", "1"]) == 2
    assert "scaledown_window must be 2..3600" in capsys.readouterr().err
    assert cost_sim.main(["--s-per-image", "1=0.5"]) == 2
    assert "--s-per-image" in capsys.readouterr().err
    empty = tmp_path / "t.csv"
    empty.write_text("timestamp\n")
    assert cost_sim.main(["--trace-csv", str(empty)]) == 2
    assert "no arrival times" in capsys.readouterr().err


def test_csv_trace_accepts_seconds_or_iso_timestamps(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("timestamp\n2026-01-01T00:00:10Z\n2026-01-01T00:00:00Z\n")
    assert cost_sim.read_trace_csv(path) == [0.0, 10.0]
    path.write_text("105.5,x\n100\n")
    assert cost_sim.read_trace_csv(path) == [0.0, 5.5]


def test_spend_cap_refuses_once_the_day_s_job_cost_reaches_it_and_opens_the_next_day():
    """1 s per image at $1/s, a $3 cap: three jobs end on day 0, the rest of day 0 is refused; day 1 runs again.
    The queued job taken in before the cap was reached still runs (four arrive at once, three end first)."""
    knobs = Knobs(min_containers=1, max_containers=1, scaledown_window=3600, spend_cap=3.0)
    day0 = [0.0, 0.0, 0.0, 0.0, 100.0, 200.0]
    r = simulate(day0 + [86400.0 + 5, 86400.0 + 100], lambda n: float(n), knobs, 1.0)
    assert r.images == 4 + 2 and r.capped == 2 and r.refused == 0
    uncapped = simulate(day0, lambda n: float(n), Knobs(min_containers=1, max_containers=1), 1.0)
    assert uncapped.capped == 0 and uncapped.images == 6
    with pytest.raises(ValueError, match="spend_cap"):
        Knobs(spend_cap=float("inf"))


def test_cli_prints_what_the_spend_cap_saves(capsys):
    assert cost_sim.main(["--bursts", "3", "200", "--hours", "24", "--spend-cap", "5"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("spend cap $5/day"))
    assert "requests refused with 429" in line and "(saves $0.00" not in line


# --- the low lane (priority "low") ----------------------------------------------------------------

def test_low_job_never_starts_a_container():
    """Low jobs alone with nothing up: no container starts, nothing is billed, they wait and expire."""
    knobs = Knobs(min_containers=0, max_containers=4, cold_start=10, max_queue_seconds=600)
    r = simulate([], lambda n: 1.0, knobs, PRICE, duration=3600, low_arrivals=[0.0, 5.0, 100.0])
    assert r.cold_starts == 0 and r.billed_seconds == 0 and r.images == 0 and r.expired == 3
    # Beside a normal job: it starts one container for itself; the low jobs queue for that one, not a second.
    r = simulate([0.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.0, 0.0, 0.0])
    assert r.cold_starts == 1 and r.latencies == [pytest.approx(11.0)]
    assert sorted(r.low_latencies) == pytest.approx([12.0, 13.0, 14.0]) and r.expired == 0


def test_low_job_runs_at_once_on_an_idle_warm_container():
    r = simulate([], lambda n: 1.0, Knobs(min_containers=1, max_containers=1), PRICE, low_arrivals=[5.0])
    assert r.cold_starts == 0 and r.low_waits == [pytest.approx(0.0)] and r.low_latencies == [pytest.approx(1.0)]
    # min 0: inside a normal job's scaledown window (it stops at 10 + 1 + 60 = 71 s) the container is still up;
    # the low job keeps it another window.
    knobs = Knobs(min_containers=0, scaledown_window=60, cold_start=10)
    r = simulate([0.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[30.0])
    assert r.cold_starts == 1 and r.low_waits == [pytest.approx(0.0)]
    assert r.billed_seconds == pytest.approx(31 + 60)
    assert r.images == 2 and r.usd_per_1000_images == pytest.approx(91 * PRICE / 2 * 1000)


def test_low_job_waits_for_capacity_and_expires_after_max_queue_seconds():
    knobs = Knobs(min_containers=0, scaledown_window=60, cold_start=10, max_queue_seconds=100)
    # A normal job at 50 s starts a container (ready at 60, done at 61); the low job from 0 s runs after it.
    r = simulate([50.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.0])
    assert r.cold_starts == 1 and r.expired == 0 and r.low_waits == [pytest.approx(61.0)]
    # The normal job comes at 150 s: the low job has waited its 100 s by then and is gone, never run.
    r = simulate([150.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.0])
    assert r.expired == 1 and r.low_latencies == [] and r.images == 1 and r.cold_starts == 1
    # The container stopped at 71 s: a low job arriving at 80 s waits with nothing up and expires at 180 s.
    r = simulate([0.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[80.0])
    assert r.expired == 1 and r.cold_starts == 1 and r.billed_seconds == pytest.approx(71)


def test_normal_jobs_go_first_when_both_wait():
    """One container busy 0..1 s; a low job arrives at 0.2 s and a normal one at 0.5 s: the normal one runs first."""
    knobs = Knobs(min_containers=1, max_containers=1, max_queue_depth=0)
    r = simulate([0.0, 0.5], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.2])
    assert r.latencies == [pytest.approx(1.0), pytest.approx(1.5)]
    assert r.low_waits == [pytest.approx(1.8)] and r.low_latencies == [pytest.approx(2.8)]
    # Batches of 2 (no batch wait, so the first arrival goes alone): all normal work before the low jobs,
    # which then share a batch.
    knobs = Knobs(min_containers=1, max_containers=1, batch_size=2, max_queue_depth=0)
    r = simulate([0.0, 0.0, 0.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.0, 0.0])
    assert sorted(r.latencies) == pytest.approx([1.0, 2.0, 2.0]) and r.low_latencies == pytest.approx([3.0, 3.0])


def test_waiting_low_jobs_count_toward_the_queue_cap():
    knobs = Knobs(min_containers=0, max_containers=1, max_queue_depth=2)
    r = simulate([1.0], lambda n: 1.0, knobs, PRICE, low_arrivals=[0.0, 0.0])
    assert r.refused == 1 and r.cold_starts == 0 and r.expired == 2


def test_cli_prints_what_the_low_lane_saves(capsys):
    assert cost_sim.main(["--bursts", "3", "200", "--hours", "2", "--low-share", "0.5", "--low-bulk", "100"]) == 0
    out = capsys.readouterr().out
    assert "low expired" in out
    line = next(line for line in out.splitlines() if line.startswith("low lane: "))
    assert "all normal" in line and "expired" in line
    assert cost_sim.main(["--low-share", "2"]) == 2
    assert "--low-share must be 0..1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_queue_seconds"):
        Knobs(max_queue_seconds=0)
