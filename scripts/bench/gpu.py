"""GPU latency and $/image of the full-size SD1.5-inpainting pipeline (random weights: weights don't change speed).

    python -m scripts.bench.gpu [--modes eager,graphs] [--sizes 512,768] [--batches 1,4,8]
                                [--steps 25] [--runs 6] [--warmup 2] [--price-per-second P]
                                [--serve-clients 8] [--no-serve] [--no-restore]

Needs CUDA; exits 2 with a message otherwise. The default run is sized for about 6 minutes on one fast GPU.
Method:
- Every mode (eager = PyTorch SDPA; graphs = the UNet replayed from CUDA graphs, CUDA_GRAPHS in production,
  inference/cuda_graphs.py; compile = torch.compile + channels_last + fused QKV, TORCH_COMPILE) is loaded side
  by side, and each mode is checked after loading (attention processors, the graphed or compiled UNet): a
  mode that did not take effect is reported as unavailable, never timed under the wrong name.
- Per (size, batch): `--warmup` untimed calls per mode (the first one captures graphs or compiles: timed as
  first_call_seconds, the first image of a new shape), then `--runs` rounds that run every mode once in a
  rotating order, so drift (clocks, thermals) hits all modes alike. CUDA is synchronised around each call.
  p50 and p90.
- torch.compile gets one static graph per shape (automatic dynamic shapes off, a recompile limit
  above the number of shapes), so compile rows compare like for like with eager.
- The UNet's own time is taken with CUDA events in hooks around each UNet call; it/s and TFLOP/s
  use it, not the whole pipeline (text encoder, VAE, PIL). FLOPs per UNet call are counted by
  torch's FlopCounterMode at each latent size (CFG doubles the batch), not scaled by area.
- Output agreement with eager: two extra same-seed runs per mode returning latents (random weights
  make decoded pixels meaningless and fp16 may overflow): max |latent - eager latent|, NaN count, and
  whether the two runs gave the same latents.
- The safety checker (off in these pipelines, on in production) is timed apart at each batch with a
  random full-size CLIP ViT-L/14 checker, and added to s/image for $/1000 images.
- $/1000 images = price of the detected GPU (service/pricing.py, or --price-per-second) x busy GPU
  seconds per image. Idle scale-down time and cold starts are not in it: feed the JSON to
  `python -m scripts.cost_sim --gpu-json bench-results/gpu.json` for that.
- Then, unless turned off: images/s through the embedded server (`python -m service` on the same weights,
  --serve-clients concurrent v1 clients), dynamic batching off and on, with CUDA graphs; and a container's
  start as Modal does it: load on CPU in fp16, move to CUDA, first image (with its graph capture), second.
- JSON (bench-results/gpu.json) is rewritten after every row, so a crash keeps what ran; a failing row
  records its error and the run goes on.
"""

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

EXPECTED_PROCESSOR = {"eager": "AttnProcessor2_0", "graphs": "AttnProcessor2_0", "compile": "FusedAttnProcessor2_0"}


def build(model_dir: Path, mode: str, device: str, dtype):
    """A pipeline in `mode`, DDIM, and the attention processor class names it really has."""
    import torch
    from diffusers import DDIMScheduler

    from inference.pipeline import load_pipeline

    if mode == "compile":
        import torch._dynamo

        torch._dynamo.config.automatic_dynamic_shapes = False
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
    pipe = load_pipeline(model_dir, device=device, dtype=dtype, safety_checker=False,
                         compile_unet=(mode == "compile"))
    if mode == "graphs":
        from inference.cuda_graphs import GraphedForward, use_cuda_graphs

        if not device.startswith("cuda"):
            raise RuntimeError("CUDA graphs only apply on CUDA (the mode did not take effect)")
        use_cuda_graphs(pipe.unet)
        assert isinstance(pipe.unet.forward, GraphedForward)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    if processors != [EXPECTED_PROCESSOR[mode]]:
        raise RuntimeError(f"attention processors are {processors}, not {EXPECTED_PROCESSOR[mode]} "
                           f"(the mode did not take effect)")
    if mode == "compile" and unet is pipe.unet:
        raise RuntimeError("the UNet was not compiled (compile only applies on CUDA)")
    return pipe, processors


def weights_bytes(pipe) -> int:
    return sum(t.numel() * t.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
               for t in itertools.chain(m.parameters(), m.buffers()))


class UnetTimer:
    """Sums the time spent inside the UNet's calls (CUDA events on GPU, perf_counter on CPU)."""

    def __init__(self, unet, cuda: bool):
        import torch

        self.torch, self.cuda, self.spans, self.start = torch, cuda, [], None
        unet.register_forward_pre_hook(self.before)
        unet.register_forward_hook(self.after)

    def mark(self):
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def before(self, *_):
        self.start = self.mark()

    def after(self, *_):
        self.spans.append((self.start, self.mark()))

    def take(self) -> float:
        """Seconds inside the UNet since the last take (call after synchronising)."""
        spans, self.spans = self.spans, []
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in spans) / 1000
        return sum(b - a for a, b in spans)


def unet_flops(pipe, size: int) -> float:
    """FLOPs of one UNet call for one image with CFG (a batch of 2 latents) at `size` pixels."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
    p = next(unet.parameters())
    side = size // 8
    sample = torch.zeros(2, unet.config.in_channels, side, side, device=p.device, dtype=p.dtype)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(sample, 500, encoder_hidden_states=context)
    return float(counter.get_total_flops())


def inputs(size: int):
    from PIL import Image

    image = Image.new("RGB", (size, size), (90, 120, 150))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return image, mask


def call(pipe, device: str, size: int, steps: int, batch: int, output_type: str = "np", seed: int = 0):
    import torch

    image, mask = inputs(size)
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(batch)]
    return pipe(prompt="a red armchair", image=image, mask_image=mask, height=size, width=size,
                num_inference_steps=steps, num_images_per_prompt=batch, generator=generators,
                output_type=output_type).images


def timed(pipe, timer: UnetTimer, device: str, size: int, steps: int, batch: int) -> tuple[float, float, float]:
    """(pipeline seconds, UNet seconds, peak extra bytes) of one call."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    timer.take()
    started = time.perf_counter()
    call(pipe, device, size, steps, batch)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    extra = torch.cuda.max_memory_allocated() - base if cuda else 0
    return elapsed, timer.take(), extra


def safety_checker_seconds(device: str, dtype, batch: int, runs: int) -> float:
    """p50 seconds per image of a random full-size safety checker (CLIP ViT-L/14 vision tower) on `batch` images."""
    import numpy as np
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    from scripts.bench.common import percentile

    config = CLIPConfig(vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                                       "num_attention_heads": 16, "patch_size": 14, "image_size": 224},
                        projection_dim=768)
    checker = StableDiffusionSafetyChecker(config).to(device, dtype).eval()
    clip_input = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    images = np.zeros((batch, 64, 64, 3), np.float32)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            checker(images=images, clip_input=clip_input)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - started)
    del checker
    return percentile(times, 50) / batch


def run_bench(model_dir: Path, modes: list[str], sizes: list[int], batches: list[int], steps: int, runs: int,
              warmup: int, device: str, dtype, gpu: str, gpu_type: str | None, price: float | None,
              out_name: str = "gpu.json", safety_checker: bool = True) -> dict:
    import torch

    from scripts.bench.common import percentile, print_table, write_json

    cuda = device.startswith("cuda")
    pipes, rows, failed = {}, [], {}
    for mode in modes:
        try:
            pipe, processors = build(model_dir, mode, device, dtype)
            pipes[mode] = (pipe, processors, UnetTimer(pipe.unet, cuda), weights_bytes(pipe))
        except Exception as exc:
            failed[mode] = f"unavailable: {exc}"
            print(f"mode {mode}: {failed[mode]}")
    flops_pipe = pipes.get("eager", next(iter(pipes.values()), None))
    report = {"gpu": gpu, "gpu_type": gpu_type, "price_per_second": price, "torch": torch.__version__,
              "device": device, "dtype": str(dtype).removeprefix("torch."), "scheduler": "DDIM", "steps": steps,
              "runs": runs, "warmup": warmup, "rows": rows}
    table = []
    for size, batch in itertools.product(sizes, batches):
        flops = unet_flops(flops_pipe[0], size) if flops_pipe else None
        safety = safety_checker_seconds(device, dtype, batch, runs) if safety_checker else None
        samples = {mode: {"seconds": [], "unet": [], "extra": 0} for mode in pipes}
        errors = dict(failed)
        first_call = {}
        for mode, (pipe, _, timer, _) in pipes.items():
            try:
                for i in range(warmup):
                    elapsed, _, _ = timed(pipe, timer, device, size, steps, batch)
                    if i == 0:
                        first_call[mode] = round(elapsed, 2)
            except Exception as exc:
                errors[mode] = f"warm-up failed: {type(exc).__name__}: {exc}"
        live = [m for m in pipes if m not in errors]
        for r in range(runs):
            shift = r % len(live) if live else 0
            for mode in live[shift:] + live[:shift]:  # a rotating order: drift hits every mode alike
                pipe, _, timer, _ = pipes[mode]
                try:
                    elapsed, unet_s, extra = timed(pipe, timer, device, size, steps, batch)
                except Exception as exc:
                    errors[mode] = f"run failed: {type(exc).__name__}: {exc}"
                    continue
                s = samples[mode]
                s["seconds"].append(elapsed)
                s["unet"].append(unet_s)
                s["extra"] = max(s["extra"], extra)
        latents, repeatable = {}, {}
        for mode in live:
            if mode not in errors:
                with torch.no_grad():
                    latents[mode] = call(pipes[mode][0], device, size, steps, batch, output_type="latent").float()
                    again = call(pipes[mode][0], device, size, steps, batch, output_type="latent").float()
                repeatable[mode] = bool(torch.equal(latents[mode], again))  # same seeds, same latents
        for mode in modes:
            row = {"mode": mode, "size": size, "steps": steps, "batch": batch, "error": errors.get(mode)}
            if mode not in errors and mode in pipes and samples[mode]["seconds"]:
                _, processors, _, wbytes = pipes[mode]
                secs, unet = samples[mode]["seconds"], samples[mode]["unet"]
                p50, p90, unet_p50 = percentile(secs, 50), percentile(secs, 90), percentile(unet, 50)
                lat, ref = latents.get(mode), latents.get("eager")
                diff = float((lat - ref).abs().max()) if lat is not None and ref is not None else None
                per_image = p50 / batch + (safety or 0.0)
                row.update({
                    "attention_processors": processors, "first_call_seconds": first_call.get(mode),
                    "seconds_p50": round(p50, 4), "seconds_p90": round(p90, 4),
                    "s_per_image_p50": round(p50 / batch, 4), "s_per_image_p90": round(p90 / batch, 4),
                    "unet_seconds_p50": round(unet_p50, 4), "unet_share": round(unet_p50 / p50, 3),
                    "unet_it_per_s": round(steps / unet_p50, 2) if unet_p50 else None,
                    "images_per_s": round(batch / p50, 3),
                    "unet_tflops": round(flops * batch * steps / unet_p50 / 1e12, 1) if flops and unet_p50 else None,
                    "unet_gflop_per_call_per_image": round(flops / 1e9, 4) if flops else None,
                    "peak_gib": round((wbytes + samples[mode]["extra"]) / 2**30, 2) if cuda else None,
                    "safety_checker_s_per_image": round(safety, 4) if safety is not None else None,
                    "usd_per_1000_images": round(price * per_image * 1000, 4) if price is not None else None,
                    "max_abs_latent_diff_vs_eager": diff, "same_latents_twice": repeatable.get(mode),
                    "latent_nan_count": int(lat.isnan().sum()) if lat is not None else None,
                })
                table.append([mode, f"{size}²", batch, row["s_per_image_p50"], row["s_per_image_p90"],
                              row["unet_it_per_s"], row["unet_tflops"], row["peak_gib"], row["first_call_seconds"],
                              row["usd_per_1000_images"], diff if diff is not None else "-", row["latent_nan_count"]])
            else:
                table.append([mode, f"{size}²", batch, "error", row["error"], "", "", "", "", "", "", ""])
            rows.append(row)
        write_json(out_name, report)
    print(f"\n{gpu}, DDIM {steps} steps, {report['dtype']}, p50/p90 of {runs} interleaved runs after {warmup} warm-up; "
          f"$ at {price}/s, busy GPU time incl. safety checker (no idle, no cold start)")
    print_table(["mode", "size", "batch", "s/img p50", "s/img p90", "UNet it/s", "UNet TFLOP/s", "peak GiB",
                 "first call s", "$/1k img", "max latent diff", "NaN"], table)
    return report


def ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def serving_rows(model_dir: Path, report: dict, clients: int, jobs: int, steps: int, size: int = 512,
                 out_name: str = "gpu.json", demo: bool = False) -> list[dict]:
    """Images/s through the embedded server on these weights, `clients` concurrent v1 clients sending `jobs`
    requests each, dynamic batching off then on (the GPU default), CUDA graphs on. Each row goes into
    report["serving"] and the JSON is rewritten."""
    from scripts.bench.batching import round_trip
    from scripts.bench.common import DemoServer, percentile, write_json
    from service.config import GPU_BATCH_MAX_IMAGES
    from tests.images import b64_png, box_mask, gradient_image

    edge = size // 4
    payload = {"image": b64_png(gradient_image(size, size)), "mask": b64_png(box_mask(size, size, (edge, edge,
               3 * edge, 3 * edge))), "prompt": "a red armchair", "num_inference_steps": steps,
               "img_width": size, "img_height": size, "seed": 1}
    rows = report.setdefault("serving", [])
    for label, batch in (("batching off", 1), ("batching on", GPU_BATCH_MAX_IMAGES)):
        env = {"MODEL_DIR": str(model_dir), "SAFETY_CHECKER": "false", "BATCH_MAX_IMAGES": str(batch),
               "CUDA_GRAPHS": "true"}
        row = {"mode": label, "batch_max_images": batch, "clients": clients, "jobs_per_client": jobs, "size": size,
               "steps": steps}
        server = DemoServer(extra_env=env, demo=demo)
        try:
            server.wait_ready(timeout=600)
            result = round_trip(server, clients, jobs, payload)
            row.update({"images_per_s": round(result["jobs_per_s"], 3),
                        "latency_p50_s": round(percentile(result["latencies"], 50), 3),
                        "lone_request_p50_s": round(percentile(result["single_latencies"], 50), 3),
                        "mean_batch_size": round(sum(result["batch_sizes"]) / len(result["batch_sizes"]), 2)})
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc} (server log: {server.log.name})"
        finally:
            server.stop()
        rows.append(row)
        print(f"serving, {label}: {row}")
        write_json(out_name, report)
    return rows


def restore_row(model_dir: Path, report: dict, steps: int, device: str = "cuda", dtype=None,
                out_name: str = "gpu.json") -> dict:
    """A GPU container's start as Modal runs it: the fp16 weights loaded on CPU (the memory snapshot phase), moved
    to the GPU (after the restore), then the first image (CUDA's set-up and the graph capture) and a second."""
    import torch

    from inference import Inpainter
    from schemas import InpaintParams
    from scripts.bench.common import write_json
    from tests.images import box_mask, gradient_image

    def synced(action) -> float:
        started = time.perf_counter()
        action()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return round(time.perf_counter() - started, 3)

    row: dict = {}
    try:
        holder = {}
        row["load_on_cpu_s"] = synced(lambda: holder.update(model=Inpainter(
            model_dir, device="cpu", dtype=dtype or torch.float16, safety_checker=False, cuda_graphs=True)))
        model = holder["model"]
        row["to_gpu_s"] = synced(lambda: model.to(device))
        params = InpaintParams(prompt="a red armchair", seed=1, num_inference_steps=steps)
        row["first_image_s"] = synced(lambda: model.run(params, gradient_image(), box_mask()))
        row["second_image_s"] = synced(lambda: model.run(params, gradient_image(), box_mask()))
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    report["restore"] = row
    print(f"container start (load on CPU, to the GPU, first and second image): {row}")
    write_json(out_name, report)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "inpaint-full-size-random")
    parser.add_argument("--modes", default="eager,graphs")
    parser.add_argument("--sizes", default="512,768")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--serve-clients", type=int, default=8)
    parser.add_argument("--serve-jobs", type=int, default=6, help="requests per client")
    parser.add_argument("--no-serve", action="store_true", help="skip the embedded server's images/s")
    parser.add_argument("--no-restore", action="store_true", help="skip the container-start timing")
    parser.add_argument("--price-per-second", type=float, default=None,
                        help="GPU $/s (default: the detected GPU's Modal list price from service/pricing.py)")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in EXPECTED_PROCESSOR]
    if unknown or args.runs < 1 or args.warmup < 1:
        parser.error(f"--modes takes {', '.join(EXPECTED_PROCESSOR)} (got {unknown}); --runs and --warmup >= 1")

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU benchmark needs one (run it on a GPU machine). Nothing measured.")
        return 2
    from scripts.bench.cold_start import make_full_size_model
    from service.jobs.pricing import gpu_from_device_name, price_per_second

    gpu = torch.cuda.get_device_name(0)
    gpu_type = gpu_from_device_name(gpu)
    price = args.price_per_second
    if price is None and gpu_type:
        price = price_per_second(gpu_type)
    if price is None:
        print(f"no list price for {gpu!r}: pass --price-per-second for the $ column")
    model_dir = make_full_size_model(args.model_dir)
    report = run_bench(model_dir, modes, ints(args.sizes), ints(args.batches), args.steps, args.runs, args.warmup,
                       "cuda", torch.float16, gpu, gpu_type, price)
    if not args.no_restore:
        restore_row(model_dir, report, args.steps)
    if not args.no_serve:
        serving_rows(model_dir, report, args.serve_clients, args.serve_jobs, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
