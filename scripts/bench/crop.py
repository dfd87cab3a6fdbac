"""Original size and crop around the mask, on the tiny model: a 4032x3024 photo with a 400x300 mask.

    python -m scripts.bench.crop [--runs 3] [--format png] [--threads N]

Each mode runs in its own process (so peak RSS is that mode's own) doing what
the worker does: decode the stored input bytes, `Inpainter.run`, encode the
result. Modes: a plain 512x512 job (the baseline: a 512x512 input, today's
behaviour), then the photo with only_masked + original_size, with
original_size alone (whole image fitted into 512x512 and mapped back), and
with only_masked alone (answer at 512x512).

Columns: output size; pixels changed outside the grown+blurred mask after a
PNG round trip (must be 0: the mask box grown by mask_grow + 3 x mask_blur);
median wall times (decode, run, of which pipeline, encode, total) and total
vs the plain job; the part of `run` outside the pipeline call (prepare and
stitch) and of the whole (decode + prepare + stitch + encode); the ratio to the
plain job with the plain job's pipeline time in place of this mode's (the
model work is the same 512x512 latent and steps in every mode, so this takes
CPU contention on the model out of the comparison); RSS after the model load
and a warm-up job, its peak during the measured runs, and the rise; model
pixels per input pixel in the masked area.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.bench.common import print_table, write_json

PHOTO = (4032, 3024)
HOLE = (1800, 1400, 2200, 1700)  # 400x300
GROW, BLUR = 8, 4
MODES = {
    "plain 512x512": {},
    "crop + original size": {"only_masked": True, "original_size": True},
    "whole image, original size": {"original_size": True},
    "crop, 512x512 answer": {"only_masked": True},
}


def photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Gradients plus grain, JPEG-encoded like a phone photo (flat gradients would flatter the PNG encoder)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 160 + 60], axis=-1)
    rgb += np.random.default_rng(seed).normal(0, 6, rgb.shape).astype(np.float32)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process; ru_maxrss would carry the parent's peak across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM restarts from the current RSS


def write_inputs(folder: Path) -> None:
    """The photo and the plain job's input as JPEG, their masks as PNG (made here so children's RSS stays theirs)."""
    for name, size, hole in (("photo", PHOTO, HOLE), ("plain", (512, 512), (192, 192, 320, 320))):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(photo_like(size)))
        mask = Image.new("L", size, 0)
        mask.paste(255, hole)
        (folder / f"{name}-mask.png").write_bytes(png_bytes(mask))


def one_mode(model_dir: str, inputs: Path, mode: str, runs: int, output_format: str) -> dict:
    from inference import Inpainter
    from inference.compose import prepare
    from inference.crop import model_scale
    from schemas import InpaintRequest
    from service.jobs.worker import encode_image

    inpainter = Inpainter(model_dir, safety_checker=False)
    plain = mode == "plain 512x512"
    size, hole = ((512, 512), (192, 192, 320, 320)) if plain else (PHOTO, HOLE)
    name = "plain" if plain else "photo"
    image_bytes = (inputs / f"{name}.jpg").read_bytes()
    mask_bytes = (inputs / f"{name}-mask.png").read_bytes()
    request = InpaintRequest(image="x", mask="x", prompt="a red chair", seed=1, mask_grow=GROW, mask_blur=BLUR,
                             output_format=output_format, **MODES[mode])
    warm = InpaintRequest(image="x", mask="x", prompt="warm up", seed=1)
    inpainter.run(warm, Image.new("RGB", (512, 512)), Image.new("L", (512, 512)))  # first call allocates the pipeline
    load_peak = rss_mb("VmHWM")
    rss_before = rss_mb("VmRSS")
    reset_peak_rss()

    timings, result, data = [], None, b""
    for _ in range(runs):
        started = time.perf_counter()
        image = Image.open(io.BytesIO(image_bytes))
        image.load()
        mask_image = Image.open(io.BytesIO(mask_bytes))
        mask_image.load()
        decoded = time.perf_counter()
        out = inpainter.run(request, image, mask_image)
        ran = time.perf_counter()
        data, _ = encode_image(out.images[0], output_format)
        encoded = time.perf_counter()
        result = out.images[0]
        timings.append({"decode": decoded - started, "run": ran - decoded, "pipeline": out.inference_time,
                        "encode": encoded - ran, "total": encoded - started})
    rss_peak = rss_mb("VmHWM")

    source = np.asarray(Image.open(io.BytesIO(image_bytes)).convert("RGB"))
    changed_outside = None
    if result.size == size:  # exactness is promised at the input's own size
        png = np.asarray(Image.open(io.BytesIO(png_bytes(result))))
        margin = GROW + 3 * BLUR
        far = np.ones(size[::-1], bool)
        far[hole[1] - margin:hole[3] + margin, hole[0] - margin:hole[2] + margin] = False
        changed_outside = int((png[far] != source[far]).any(axis=-1).sum())
    job = prepare(Image.open(io.BytesIO(image_bytes)), Image.open(io.BytesIO(mask_bytes)), (512, 512),
                  only_masked=request.only_masked, original_size=request.original_size,
                  padding=request.mask_padding, grow_px=GROW, feather_px=BLUR)
    median = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
    return {"mode": mode, "input": f"{size[0]}x{size[1]}", "output": f"{result.size[0]}x{result.size[1]}",
            "box": job.box, "placed": job.placed, "scale": round(model_scale(job.box, job.placed), 3),
            "changed_outside": changed_outside, "output_bytes": len(data), "median_s": median, "runs": timings,
            "rss_load_peak_mb": round(load_peak), "rss_before_mb": round(rss_before), "rss_peak_mb": round(rss_peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    parser.add_argument("--model-dir")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_mode(args.model_dir, Path(args.inputs), args.one, args.runs, args.format)))
        return

    from scripts.make_tiny_model import build

    model_dir = args.model_dir or str(build(Path(tempfile.mkdtemp(prefix="tiny-model-"))))
    inputs = Path(tempfile.mkdtemp(prefix="crop-bench-"))
    write_inputs(inputs)
    rows, results = [], []
    for mode in MODES:
        command = [sys.executable, "-m", "scripts.bench.crop", "--one", mode, "--model-dir", model_dir,
                   "--inputs", str(inputs), "--runs", str(args.runs), "--format", args.format]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = results[0]["median_s"]["total"]
    base_pipeline = results[0]["median_s"]["pipeline"]
    for r in results:
        m = r["median_s"]
        rows.append([r["mode"], r["input"], r["output"], "n/a" if r["changed_outside"] is None else r["changed_outside"],
                     f"{m['decode'] * 1000:.0f}", f"{m['run'] * 1000:.0f}", f"{m['pipeline'] * 1000:.0f}",
                     f"{m['encode'] * 1000:.0f}", f"{m['total'] * 1000:.0f}", f"{m['total'] / base:.2f}x",
                     f"{(m['run'] - m['pipeline']) * 1000:.0f}", f"{(m['total'] - m['pipeline']) * 1000:.0f}",
                     f"{(base_pipeline + m['total'] - m['pipeline']) / base:.2f}x",
                     r["rss_before_mb"], r["rss_peak_mb"], r["rss_peak_mb"] - r["rss_before_mb"], r["scale"]])
    print(f"tiny model, {args.runs} runs per mode (median), {args.format} output, mask {HOLE} "
          f"grown {GROW} px, blur {BLUR} px, padding 32 px")
    print_table(["mode", "input", "output", "changed outside", "decode ms", "run ms", "pipeline ms", "encode ms",
                 "total ms", "vs plain", "prepare+stitch ms", "outside model ms", "vs plain, same model time",
                 "RSS before MB", "peak RSS MB", "rise MB",
                 "model px / input px"], rows)
    write_json("crop.json", {"format": args.format, "runs": args.runs, "results": results})


if __name__ == "__main__":
    main()
