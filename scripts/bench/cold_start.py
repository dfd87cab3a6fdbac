"""Cold start: (a) web tier process start -> first /health 200, without torch;
(b) full-size SD1.5-inpainting pipeline load vs a raw sequential read of the same files.

    python -m scripts.bench.cold_start [--model-dir DIR] [--keep] [--skip-model]

(b) generates a FULL-SIZE random-weight checkpoint with the real configs (UNet
9-channel 320/640/1280/1280, SD VAE, CLIP ViT-L/14 text encoder; fp16
safetensors, about 2.13 GB) into a temp dir (or --model-dir, reused if present).
Before each timed read the files are evicted from the page cache: drop_caches when
permitted, else posix_fadvise(DONTNEED) per file, which needs no privilege.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from scripts.bench.common import free_port, print_table, write_json


def bench_web_tier(runs: int = 5) -> dict:
    results = []
    for _ in range(runs):
        port = free_port()
        report = Path(tempfile.mkstemp(suffix=".json")[1])
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "scripts.bench.web_tier_server", str(port), str(report)])
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.005)
            ready = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(10)
        inner = json.loads(report.read_text())
        results.append({"process_start_to_health_s": round(ready, 3), **inner})
    best = min(results, key=lambda r: r["process_start_to_health_s"])
    return {"runs": results, "best": best,
            "median_process_start_to_health_s": sorted(r["process_start_to_health_s"] for r in results)[runs // 2],
            "median_import_to_app_built_s": sorted(r["import_to_app_built_s"] for r in results)[runs // 2]}


def make_full_size_model(out: Path) -> Path:
    """Random weights, real SD1.5-inpainting shapes, fp16 safetensors with the 'fp16' variant names."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from weights.tiny import SD15_SCHEDULER_CONFIG, write_tokenizer

    if (out / "model_index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    unet = UNet2DConditionModel(in_channels=9, out_channels=4, sample_size=64, cross_attention_dim=768,
                                block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, layers_per_block=2)
    unet.half().save_pretrained(out / "unet", variant="fp16", safe_serialization=True)
    del unet
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    vae.half().save_pretrained(out / "vae", variant="fp16", safe_serialization=True)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    text.half().save_pretrained(out / "text_encoder", variant="fp16", safe_serialization=True)
    write_tokenizer(out / "tokenizer")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "PNDMScheduler", **SD15_SCHEDULER_CONFIG}))
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    print(f"generated full-size random model in {time.perf_counter() - started:.1f}s at {out}")
    return out


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file())


def evict(files: list[Path]) -> str:
    """Evict the files from the page cache. fadvise always runs: a sandbox may accept a drop_caches write and ignore it."""
    method = "posix_fadvise(DONTNEED)"
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        method = "drop_caches + " + method
    except OSError:
        pass
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return method


def raw_read(files: list[Path]) -> tuple[float, int]:
    started, total = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 * 1024 * 1024):
                total += len(chunk)
    return time.perf_counter() - started, total


LOAD_SNIPPET = """
import json, sys, time
t = time.perf_counter()
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
from inference.pipeline import load_pipeline
imported = time.perf_counter() - t  # imports are timed apart (on Modal they live in the memory snapshot)
t = time.perf_counter()
pipe = load_pipeline(sys.argv[1], device="cpu", dtype=torch.float16, safety_checker=False)
loaded = time.perf_counter() - t
# safetensors may leave weights memory-mapped and unread; touch every page so the load is complete
# (on a GPU the .to("cuda") copy does this).
with torch.no_grad():
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        for p in module.parameters():
            p.view(-1)[::2048].float().sum()
print(json.dumps({"import_s": imported, "load_s": time.perf_counter() - t, "lazy_load_s": loaded}))
"""


def bench_model_load(model_dir: Path, runs: int = 3) -> dict:
    files = weight_files(model_dir)
    rows = []
    for _ in range(runs):
        # Raw read before and after the load; the faster of the two is the baseline (the virtual disk
        # here has a host-side cache that eviction inside the VM cannot reach, so reads vary).
        method = evict(files)
        before_s, total = raw_read(files)
        evict(files)
        out = subprocess.run([sys.executable, "-c", LOAD_SNIPPET, str(model_dir)], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        load = json.loads(out.stdout.strip().splitlines()[-1])
        evict(files)
        after_s, _ = raw_read(files)
        read_s = min(before_s, after_s)
        rows.append({"eviction": method, "bytes": total, "raw_read_s": round(read_s, 3),
                     "raw_read_before_after_s": [round(before_s, 3), round(after_s, 3)],
                     "raw_read_GBps": round(total / read_s / 1e9, 2), "pipeline_load_s": round(load["load_s"], 3),
                     "load_before_touching_pages_s": round(load["lazy_load_s"], 3),
                     "torch_diffusers_import_s": round(load["import_s"], 3),
                     "ratio_load_to_raw": round(load["load_s"] / read_s, 2)})
    return {"model_dir": str(model_dir), "runs": rows,
            "median_ratio": sorted(r["ratio_load_to_raw"] for r in rows)[runs // 2]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "inpaint-full-size-random")
    parser.add_argument("--skip-model", action="store_true", help="only the web-tier part")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    web = bench_web_tier()
    print("\n(a) web tier cold start")
    print_table(["run", "process start -> /health 200 (s)", "imports + app built (s)", "torch imported"],
                [[i + 1, r["process_start_to_health_s"], round(r["import_to_app_built_s"], 3), r["torch_imported"]]
                 for i, r in enumerate(web["runs"])])
    data = {"web_tier": web}
    if not args.skip_model:
        model = bench_model_load(make_full_size_model(args.model_dir), args.runs)
        print("\n(b) full-size pipeline load (CPU, fp16) vs raw sequential read")
        print_table(["run", "eviction", "GB", "raw read s", "GB/s", "load s", "load/raw"],
                    [[i + 1, r["eviction"], round(r["bytes"] / 1e9, 2), r["raw_read_s"], r["raw_read_GBps"],
                      r["pipeline_load_s"], r["ratio_load_to_raw"]] for i, r in enumerate(model["runs"])])
        data["model_load"] = model
    write_json("cold_start.json", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
