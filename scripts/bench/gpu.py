"""GPU latency of the full-size SD1.5-inpainting pipeline (random weights: weights don't change speed).

    python -m scripts.bench.gpu [--price-per-second 0.000222] [--modes eager,xformers,compile] [--runs 3]

Needs CUDA; exits with a message otherwise. For each attention/compile mode, at
512² and 768², 20 and 25 DDIM steps, batch 1 and 4: s/image, it/s, images/s,
achieved TFLOP/s against the compute floor (one SD1.5 UNet forward at a 64x64
latent is ~803 GFLOP; CFG doubles it; scaled by latent area, which undercounts
attention at 768²), peak GPU memory, $/1000 images at --price-per-second, and the
largest pixel difference of each mode's same-seed output from eager's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

UNET_GFLOP_64 = 803.0


def build(model_dir: Path, mode: str):
    import torch

    from inference.pipeline import load_pipeline

    pipe = load_pipeline(model_dir, device="cuda", dtype=torch.float16, safety_checker=False,
                         xformers=(mode == "xformers"), compile_unet=(mode == "compile"))
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def run_once(pipe, size: int, steps: int, batch: int, seed: int = 0):
    import torch
    from PIL import Image

    image = Image.new("RGB", (size, size), (90, 120, 150))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    generators = [torch.Generator("cuda").manual_seed(seed + i) for i in range(batch)]
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = pipe(prompt="a red armchair", image=image, mask_image=mask, height=size, width=size,
               num_inference_steps=steps, num_images_per_prompt=batch, generator=generators, output_type="np")
    torch.cuda.synchronize()
    return time.perf_counter() - started, out.images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "inpaint-full-size-random")
    parser.add_argument("--modes", default="eager,xformers,compile")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--price-per-second", type=float, default=0.000222, help="GPU $/s (default: Modal L4)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark needs one (run it on a GPU machine). Nothing measured.")
        return 2
    from scripts.bench.cold_start import make_full_size_model
    from scripts.bench.common import print_table, write_json

    model_dir = make_full_size_model(args.model_dir)
    gpu = torch.cuda.get_device_name(0)
    rows, results, reference = [], [], {}
    for mode in args.modes.split(","):
        try:
            pipe = build(model_dir, mode)
        except Exception as exc:
            print(f"mode {mode}: unavailable ({exc})")
            continue
        for size in (512, 768):
            for steps in (20, 25):
                for batch in (1, 4):
                    run_once(pipe, size, steps, batch)  # warm-up (and compilation for 'compile')
                    torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(args.runs):
                        elapsed, images = run_once(pipe, size, steps, batch)
                        times.append(elapsed)
                    t = sorted(times)[len(times) // 2]
                    key = (size, steps, batch)
                    if mode == "eager":
                        reference[key] = images
                    diff = (float(np.abs(images - reference[key]).max() * 255) if key in reference else None)
                    flop = 2 * UNET_GFLOP_64 * 1e9 * (size / 512) ** 2 * steps * batch
                    result = {
                        "mode": mode, "size": size, "steps": steps, "batch": batch, "seconds": round(t, 4),
                        "s_per_image": round(t / batch, 4), "it_per_s": round(steps / t, 2),
                        "images_per_s": round(batch / t, 3), "tflops": round(flop / t / 1e12, 1),
                        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                        "usd_per_1000_images": round(args.price_per_second * t / batch * 1000, 4),
                        "max_pixel_diff_vs_eager": diff,
                    }
                    results.append(result)
                    rows.append([mode, f"{size}²", steps, batch, result["s_per_image"], result["it_per_s"],
                                 result["images_per_s"], result["tflops"], result["peak_gib"],
                                 result["usd_per_1000_images"], diff if diff is not None else "-"])
        del pipe
        torch.cuda.empty_cache()
    print(f"\n{gpu}, DDIM, fp16, median of {args.runs} runs; $ at {args.price_per_second}/s")
    print_table(["mode", "size", "steps", "batch", "s/img", "it/s", "img/s", "TFLOP/s", "peak GiB", "$/1k img",
                 "max px diff"], rows)
    write_json("gpu.json", {"gpu": gpu, "torch": torch.__version__, "price_per_second": args.price_per_second,
                            "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
