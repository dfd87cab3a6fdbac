"""The mask model behind mask_prompt (CLIPSeg), timed the way a request spends it.

    python -m scripts.bench.mask_model [--device auto|cpu|cuda] [--runs 5] [--warmup 1] [--model-dir DIR]
                                       [--photo 4000x3000] [--extend 512] [--load-runs 3] [--threads N]

Without --model-dir a random-weight CLIPSeg with the real model's shapes (CIDAS/clipseg-rd64-refined, about
600 MB; `weights.tiny.build_mask_model(..., full_size=True)`) is built once into
.models/clipseg-full-size-random and reused; random weights don't change speed. The model is loaded as the
service loads it (`PaintArea(dir, device, dtype)`: fp16 on CUDA, fp32 on CPU, where torch gets the service's
thread count: OMP_NUM_THREADS, else the cores less one). Figures, in order:

- load: seconds to load the model (the first load in the process, then the median of --load-runs loads),
  the process's peak RSS growth during the first load, and on CUDA torch.cuda.max_memory_allocated. Then the
  first call after the load, timed, and the RSS it leaves: safetensors weights can stay memory-mapped until
  that call reads them (the file-backed part is given apart).
- threshold: the service's default (0.4), or, should random weights find nothing with it, one that does.
- find at 512x512 and at the photo size (a 12 MP photo by default): `MaskModel.find` on an RGB picture,
  what the service spends per mask_prompt request (shrink to 352x352, processor, model, threshold, scale the
  mask back to the picture's size). Median, min and max over --runs after --warmup calls; beside it the
  same steps timed one by one (a copy of MaskModel.scores/find, checked to give find's mask).
- request: what a mask_prompt request with original_size pays before the pipeline call at the photo size:
  `prepare_request` (PaintArea.resolve, i.e. find + joining the masks, then compose.prepare), split into
  find, the rest of resolve, and prepare; peak RSS growth during the measured runs. Random weights mark
  pixels all over the frame, so its feathering covers the whole picture; prepare_one_object times the same
  compose.prepare with one object's mask (a centred box) for comparison.
- extend: `compose.extend_canvas` of the photo with --extend pixels on the left and on the right, and the
  whole preparation of that outpainting request (original_size, no mask_prompt).

Peak RSS growth is the process's VmHWM (peak resident set) minus its VmRSS just before, with the peak reset
through /proc/self/clear_refs (Linux); where that reset is refused, resource.getrusage's ru_maxrss (which
cannot be reset) is used and the growth is only what passes the earlier peak (the JSON names the method).
tracemalloc is not used: it does not see Pillow's or torch's memory. On CUDA synchronisation brackets every
timed step. Every figure is printed as a JSON line as soon as it exists and appended to
bench-results/mask_model.jsonl; a table follows at the end, and bench-results/mask_model.json holds it all.
"""

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODEL_DIR = Path(".models/clipseg-full-size-random")
PROMPT = "the sofa"
JSONL = "mask_model.jsonl"


# -- memory -------------------------------------------------------------------------------------------------------

def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class PeakRss:
    """Peak RSS growth of this process over a stretch of work (see the module docstring)."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs" if self._reset() and _status_mb("VmHWM") is not None else \
            "ru_maxrss (not resettable: growth past the earlier peak only)"
        self._trim = self._malloc_trim()
        if self._trim is not None:
            self.method += ", freed heap returned first (malloc_trim)"
        self.before = 0.0

    @staticmethod
    def _malloc_trim():
        """glibc's malloc_trim: without it memory freed by a warm-up stays in the heap, and the measured runs
        reuse it without raising RSS."""
        try:
            import ctypes

            return ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            return None

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM restarts from the current RSS
            return True
        except OSError:
            return False

    @staticmethod
    def _maxrss_mb() -> float:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux

    def start(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        if self.method.startswith("VmHWM"):
            self._reset()
            self.before = _status_mb("VmRSS") or 0.0
        else:
            self.before = self._maxrss_mb()

    def growth_mb(self) -> float:
        peak = _status_mb("VmHWM") if self.method.startswith("VmHWM") else self._maxrss_mb()
        return round(max(0.0, (peak or 0.0) - self.before), 1)

    @staticmethod
    def now_mb() -> float | None:
        value = _status_mb("VmRSS")
        return None if value is None else round(value, 1)


class CudaPeak:
    def __init__(self, device: str):
        self.on = device.startswith("cuda")
        self.before = 0

    def start(self) -> None:
        if self.on:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()

    def growth_mb(self) -> float | None:
        if not self.on:
            return None
        import torch

        torch.cuda.synchronize()
        return round((torch.cuda.max_memory_allocated() - self.before) / 2**20, 1)


# -- figures ------------------------------------------------------------------------------------------------------

def spread_ms(seconds: list[float]) -> dict:
    return {"median_ms": round(statistics.median(seconds) * 1000, 2), "min_ms": round(min(seconds) * 1000, 2),
            "max_ms": round(max(seconds) * 1000, 2), "runs": len(seconds)}


class Report:
    """Prints each figure as a JSON line as it exists, appends it to the JSONL file, keeps it for the summary."""

    def __init__(self) -> None:
        from scripts.bench import common

        self.figures: list[dict] = []
        common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.path = common.RESULTS_DIR / JSONL
        self.path.write_text("")

    def emit(self, figure: str, **data) -> dict:
        record = {"bench": "mask_model", "figure": figure, **data}
        self.figures.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")
        return record


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(part) for part in text.lower().split("x"))
    return width, height


def ensure_model(model_dir: Path | None, report: Report) -> Path:
    from weights import has_mask_model
    from weights.tiny import build_mask_model

    if model_dir is not None:
        if not has_mask_model(model_dir):
            raise SystemExit(f"no CLIPSeg model in {model_dir} (config.json and preprocessor_config.json)")
        return model_dir
    if has_mask_model(DEFAULT_MODEL_DIR):
        return DEFAULT_MODEL_DIR
    partial = DEFAULT_MODEL_DIR.with_name(f"{DEFAULT_MODEL_DIR.name}.partial-{os.getpid()}")
    started = time.perf_counter()
    build_mask_model(partial, seed=0, full_size=True)
    partial.rename(DEFAULT_MODEL_DIR)  # whole or not at all: an interrupted build is never taken for a model
    report.emit("built", model_dir=str(DEFAULT_MODEL_DIR), seconds=round(time.perf_counter() - started, 2))
    return DEFAULT_MODEL_DIR


def repeat(work, runs: int, warmup: int) -> list[float]:
    """Seconds of each of `runs` calls of work() after `warmup` untimed ones (CPU-only work: no CUDA sync)."""
    for _ in range(warmup):
        work()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return seconds


def find_stages(model, picture, prompt: str, threshold: float, sync) -> tuple[dict[str, float], object]:
    """MaskModel.scores + find step by step (a copy of inference/masks.py), each step timed; and the mask."""
    import numpy as np
    import torch
    from PIL import Image

    from inference.masks import MAX_TOKENS

    times = {}
    started = time.perf_counter()
    small = picture.resize((model.side, model.side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    times["shrink"] = time.perf_counter() - started
    started = time.perf_counter()
    inputs = model.processor(text=[prompt], images=[small], return_tensors="pt", padding=True, truncation=True,
                             max_length=MAX_TOKENS)
    inputs = {name: value.to(model.device) for name, value in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sync()
    times["processor"] = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        logits = model.model(**inputs).logits
    scores = torch.sigmoid(logits.float()).reshape(model.side, model.side).cpu().numpy()
    times["model"] = time.perf_counter() - started
    started = time.perf_counter()
    found = Image.fromarray(np.where(scores >= threshold, 255, 0).astype(np.uint8), "L")
    times["threshold"] = time.perf_counter() - started
    started = time.perf_counter()
    if found.size != picture.size:
        found = found.resize(picture.size, Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
    times["scale_back"] = time.perf_counter() - started
    return times, found


def mask_shares(mask) -> dict:
    """How much of the picture the found mask covers, and its bounding box (what compose's feathering blurs)."""
    import numpy as np

    box = mask.getbbox()
    area = mask.width * mask.height
    box_area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
    return {"mask_share": round(float((np.asarray(mask) > 0).mean()), 3), "mask_box_share": round(box_area / area, 3)}


def pick_threshold(model, picture, wanted: float) -> tuple[float, str, float]:
    """The service's default threshold, unless the (random-weight) model finds nothing with it; and the share of
    scores that are not finite (random weights in fp16 could overflow)."""
    import numpy as np

    scores = model.scores(picture, PROMPT)
    finite = np.isfinite(scores)
    nonfinite = round(float(1 - finite.mean()), 4)
    if (scores[finite] > wanted).any():
        return wanted, "the service's default", nonfinite
    if not finite.any():
        raise SystemExit("the model's scores are all NaN or infinite: no threshold finds a mask")
    low, high = float(scores[finite].min()), float(scores[finite].max())
    if high <= low:
        raise SystemExit(f"the model scores every pixel {low}: no threshold finds a mask")
    return (low + high) / 2, f"midway between the lowest and highest score (nothing passed {wanted})", nonfinite


def time_find(model, picture, threshold: float, runs: int, warmup: int, sync) -> dict:
    import numpy as np

    for _ in range(warmup):
        model.find(picture, PROMPT, threshold)
        find_stages(model, picture, PROMPT, threshold, sync)
    totals, stages, found, staged = [], [], None, None
    for _ in range(runs):
        sync()
        started = time.perf_counter()
        found = model.find(picture, PROMPT, threshold)
        totals.append(time.perf_counter() - started)
        step_times, staged = find_stages(model, picture, PROMPT, threshold, sync)
        stages.append(step_times)
    median_stages = {name: round(statistics.median(s[name] for s in stages) * 1000, 2) for name in stages[0]}
    return {"size": f"{picture.width}x{picture.height}", **spread_ms(totals), "steps_median_ms": median_stages,
            "steps_match_find": bool(np.array_equal(np.asarray(found.mask), np.asarray(staged))),
            **mask_shares(found.mask)}


def time_request(params, picture, area, runs: int, warmup: int, feather_px: int, sync, rss: PeakRss,
                 cuda: CudaPeak) -> dict:
    """`prepare_request` as the worker calls it, with PaintArea.resolve timed inside it."""
    from inference.inpainter import prepare_request

    inner = area.resolve
    resolve_seconds: list[float] = []

    def timed_resolve(*args, **kwargs):
        started = time.perf_counter()
        result = inner(*args, **kwargs)
        resolve_seconds.append(time.perf_counter() - started)
        return result

    area.resolve = timed_resolve
    try:
        for _ in range(warmup):
            prepare_request(params, picture, None, area, feather_px)
        resolve_seconds.clear()
        totals, finds, prepared = [], [], None
        rss.start()
        cuda.start()
        for _ in range(runs):
            prepared = None  # the previous result goes before the next one is made, as in the worker
            sync()
            started = time.perf_counter()
            prepared, mask_seconds = prepare_request(params, picture, None, area, feather_px)
            totals.append(time.perf_counter() - started)
            finds.append(mask_seconds or 0.0)
        rss_growth, cuda_growth = rss.growth_mb(), cuda.growth_mb()
    finally:
        del area.resolve
    rest = [r - f for r, f in zip(resolve_seconds, finds)]
    prepares = [t - r for t, r in zip(totals, resolve_seconds)]
    out = {"input": f"{picture.width}x{picture.height}",
           "output": f"{prepared.output_size[0]}x{prepared.output_size[1]}", **spread_ms(totals),
           "find_median_ms": round(statistics.median(finds) * 1000, 2) if params.mask_prompt else None,
           "resolve_rest_median_ms": round(statistics.median(rest) * 1000, 2),
           "prepare_median_ms": round(statistics.median(prepares) * 1000, 2),
           "peak_rss_growth_mb": rss_growth, **mask_shares(prepared.mask)}
    if cuda_growth is not None:
        out["cuda_peak_growth_mb"] = cuda_growth
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--load-runs", type=int, default=3, help="loads timed (the first is also the RSS figure)")
    parser.add_argument("--model-dir", type=Path, help=f"a CLIPSeg model folder (default: {DEFAULT_MODEL_DIR}, "
                                                       f"built once with random full-size weights)")
    parser.add_argument("--photo", type=parse_size, default=(4000, 3000), help="the large picture, WxH")
    parser.add_argument("--extend", type=int, default=512, help="outpainting: pixels added on the left and right")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: the service's own choice, "
                                                     "OMP_NUM_THREADS or the cores less one)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.load_runs < 1 or args.warmup < 0:
        parser.error("--runs and --load-runs must be at least 1, --warmup at least 0")

    import inference  # noqa: F401  (first: importing it filters transformers' notice about torchvision)
    import torch
    from PIL import Image

    from inference.compose import extend_canvas, prepare
    from inference.masks import PaintArea
    from schemas import InpaintParams
    from schemas.request import DEFAULT_MASK_THRESHOLD
    from scripts.bench.common import machine, print_table, write_json
    from scripts.bench.crop import photo_like
    from service.config import Settings

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here", file=sys.stderr)
        return 2
    if args.threads or device == "cpu":
        from inference.pipeline import inference_threads

        torch.set_num_threads(args.threads or inference_threads())  # as load_pipeline does on CPU
    dtype = torch.float16 if device == "cuda" else torch.float32  # as the service: the pipeline's dtype
    feather_px = Settings.model_fields["feather_px"].default

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    report = Report()
    model_dir = ensure_model(args.model_dir, report)
    rss, cuda = PeakRss(), CudaPeak(device)
    setup = {"device": device, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
             "threads": torch.get_num_threads(), "model_dir": str(model_dir),
             "model_mb": round(sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file()) / 2**20, 1),
             "rss_method": rss.method, "runs": args.runs, "warmup": args.warmup, "machine": machine()}
    if device == "cuda":
        started = time.perf_counter()
        torch.zeros(1, device="cuda")
        sync()
        setup["cuda_init_s"] = round(time.perf_counter() - started, 3)
        setup["gpu"] = torch.cuda.get_device_name()
    report.emit("setup", **setup)

    # Load, as the service does beside the pipeline. The weights may stay memory-mapped (safetensors) until the
    # first call reads them, so that call is timed too, with the RSS it leaves (file-backed pages apart).
    small = photo_like((512, 512), seed=1)
    loads = []
    rss.start()
    cuda.start()
    file_before = _status_mb("RssFile") or 0.0
    started = time.perf_counter()
    area = PaintArea(model_dir, device, dtype)
    sync()
    loads.append(time.perf_counter() - started)
    load = {"first_s": round(loads[0], 3), "peak_rss_growth_mb": rss.growth_mb(),
            "params_m": round(sum(p.numel() for p in area.model.model.parameters()) / 1e6, 3)}
    if cuda.on:
        load["cuda_peak_growth_mb"] = cuda.growth_mb()
    started = time.perf_counter()
    area.model.scores(small, PROMPT)
    sync()
    load["first_call_s"] = round(time.perf_counter() - started, 3)
    if rss.method.startswith("VmHWM"):
        load["rss_growth_after_first_call_mb"] = round((PeakRss.now_mb() or 0.0) - rss.before, 1)
        load["of_which_file_backed_mb"] = round((_status_mb("RssFile") or 0.0) - file_before, 1)
    for _ in range(args.load_runs - 1):
        del area
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        started = time.perf_counter()
        area = PaintArea(model_dir, device, dtype)
        sync()
        loads.append(time.perf_counter() - started)
    report.emit("load", **load, median_s=round(statistics.median(loads), 3), min_s=round(min(loads), 3),
                max_s=round(max(loads), 3), runs=len(loads))
    model = area.model

    photo = photo_like(args.photo, seed=2)
    threshold, how, nonfinite = pick_threshold(model, small, DEFAULT_MASK_THRESHOLD)
    report.emit("threshold", threshold=round(threshold, 4), chosen=how, prompt=PROMPT, nonfinite_share=nonfinite)

    finds = [report.emit("find", **time_find(model, picture, threshold, args.runs, args.warmup, sync))
             for picture in (small, photo)]

    request = InpaintParams(prompt="a green armchair", mask_prompt=PROMPT, mask_threshold=threshold,
                            original_size=True, seed=1)
    mask_request = report.emit("request", kind="mask_prompt, original_size", **time_request(
        request, photo, area, args.runs, args.warmup, feather_px, sync, rss, cuda))

    # The same prepare on a one-object mask (a centred box, 40% of each side): random weights mark pixels all
    # over the frame, so the request above feathers the whole picture, which a real object's mask does not.
    box = Image.new("L", photo.size, 0)
    box.paste(255, (photo.width * 3 // 10, photo.height * 3 // 10, photo.width * 7 // 10, photo.height * 7 // 10))
    one_object = report.emit("prepare_one_object", input=f"{photo.width}x{photo.height}", **mask_shares(box),
                             **spread_ms(repeat(lambda: prepare(photo, box, (512, 512), original_size=True,
                                                                feather_px=feather_px), args.runs, args.warmup)))

    sides = (args.extend, 0, args.extend, 0)
    blank = Image.new("L", photo.size, 0)
    width = photo.width + 2 * args.extend
    extend = report.emit("extend", input=f"{photo.width}x{photo.height}", sides=list(sides),
                         output=f"{width}x{photo.height}",
                         **spread_ms(repeat(lambda: extend_canvas(photo, blank, sides), args.runs, args.warmup)))
    outpaint = InpaintParams(prompt="more of the room", extend_left=args.extend, extend_right=args.extend,
                             original_size=True, seed=1)
    outpaint_request = report.emit("request", kind="extend left+right, original_size", **time_request(
        outpaint, photo, area, args.runs, args.warmup, feather_px, sync, rss, cuda))

    def cell(record: dict, key: str):
        value = record.get(key)
        return "" if value is None else value

    rows = [["load (first / median)", "", f"{load['first_s'] * 1000:.0f} / {statistics.median(loads) * 1000:.0f}",
             f"{min(loads) * 1000:.0f}-{max(loads) * 1000:.0f}", cell(load, "peak_rss_growth_mb"),
             cell(load, "cuda_peak_growth_mb")],
            ["first call after the load", "", f"{load['first_call_s'] * 1000:.0f}", "",
             cell(load, "rss_growth_after_first_call_mb"), ""]]
    for record in finds:
        steps = " ".join(f"{k} {v:.1f}" for k, v in record["steps_median_ms"].items())
        rows.append([f"find {record['size']}", steps, record["median_ms"],
                     f"{record['min_ms']:.1f}-{record['max_ms']:.1f}", "", ""])
    for record in (mask_request, outpaint_request):
        split = f"find {record['find_median_ms']:.1f} " if record["find_median_ms"] is not None else ""
        split += f"resolve rest {record['resolve_rest_median_ms']:.1f} prepare {record['prepare_median_ms']:.1f}"
        rows.append([f"request {record['kind']} -> {record['output']}", split, record["median_ms"],
                     f"{record['min_ms']:.1f}-{record['max_ms']:.1f}", record["peak_rss_growth_mb"],
                     cell(record, "cuda_peak_growth_mb")])
    rows.append([f"prepare, one-object mask {one_object['input']}", "", one_object["median_ms"],
                 f"{one_object['min_ms']:.1f}-{one_object['max_ms']:.1f}", "", ""])
    rows.append([f"extend_canvas -> {extend['output']}", "", extend["median_ms"],
                 f"{extend['min_ms']:.1f}-{extend['max_ms']:.1f}", "", ""])
    print(f"\nmask model on {device} ({setup['dtype']}, {setup['threads']} threads), {setup['model_mb']} MB at "
          f"{model_dir}; {args.runs} runs after {args.warmup} warm-up; threshold {threshold:g}")
    print_table(["what", "median ms by step", "median ms", "min-max ms", "peak RSS rise MB", "CUDA peak rise MB"],
                rows)
    write_json("mask_model.json", {"figures": report.figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
