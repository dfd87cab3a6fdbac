"""A tiny-model job's time with the machine idle and with another process keeping one core busy.

    python -m scripts.bench.contention [--runs 5]

Runs itself in child processes (the thread settings are read when torch starts), once per setting,
and prints the median job time idle and contended.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {  # label -> environment
    "default (cores less one)": {},
    "2 threads, PASSIVE wait": {"OMP_NUM_THREADS": "2"},
    "2 threads, ACTIVE wait": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"},
}


def child(model_dir: str, runs: int) -> None:
    from inference import Inpainter
    from schemas import InpaintParams
    from tests.images import box_mask, gradient_image

    model = Inpainter(model_dir)
    params = InpaintParams(prompt="a chair", seed=1)
    model.run(params, gradient_image(), box_mask())
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(params, gradient_image(), box_mask())
        times.append(time.perf_counter() - started)
    print(sorted(times)[len(times) // 2])


def median_job(model_dir: Path, runs: int, env: dict) -> float:
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-m", "scripts.bench.contention", "--child", str(model_dir), str(runs)],
                         env={**environ, **env}, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from weights.tiny import build

    model_dir = build(Path(tempfile.mkdtemp(prefix="contention-")))
    print(f"{'setting':28} {'idle s':>8} {'one core busy s':>16} {'slowdown':>9}")
    for label, env in SETTINGS.items():
        idle = median_job(model_dir, args.runs, env)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            contended = median_job(model_dir, args.runs, env)
        finally:
            busy.kill()
        print(f"{label:28} {idle:8.2f} {contended:16.2f} {contended / idle:8.1f}x")


if __name__ == "__main__":
    main()
