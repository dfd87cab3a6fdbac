"""Fetch the real SD1.5-inpainting weights into a local directory (Hugging Face layout), and the mask model.

Only what StableDiffusionInpaintPipeline needs, and only the fp16 safetensors
variant (the repository ships safetensors weights only as fp16; the rest are
.bin/.ckpt files we never want). About 2.1 GB with the safety checker. Then
CIDAS/clipseg-rd64-refined (about 600 MB), the mask model behind mask_prompt,
into the weights directory's `clipseg` folder. Files already there are kept,
so running it again over older weights adds only the mask model.

    python -m weights.download MODEL_DIR [--no-safety-checker] [--no-mask-model]
"""

import argparse
import sys
from pathlib import Path

from weights import MASK_MODEL_FOLDER, MASK_MODEL_WEIGHTS

REPO_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
MASK_REPO_ID = "CIDAS/clipseg-rd64-refined"
MASK_CONFIG_FILES = {"config.json", "preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                     "special_tokens_map.json"}
WEIGHT_SUFFIX = ".fp16.safetensors"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker", "feature_extractor")
CONFIG_FILES = {
    "config.json",
    "scheduler_config.json",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def select_files(repo_files: list[str], safety_checker: bool = True) -> list[str]:
    """The repository files the pipeline needs: model_index.json, component configs, fp16 safetensors."""
    wanted = {"safety_checker", "feature_extractor"}
    components = [c for c in COMPONENTS if safety_checker or c not in wanted]
    selected = []
    for path in repo_files:
        if path == "model_index.json":
            selected.append(path)
            continue
        folder, _, name = path.partition("/")
        if folder not in components or "/" in name:
            continue
        if name in CONFIG_FILES or name.endswith(WEIGHT_SUFFIX):
            selected.append(path)
    missing = [c for c in components if c not in ("tokenizer", "scheduler", "feature_extractor")
               and not any(p.startswith(c + "/") and p.endswith(WEIGHT_SUFFIX) for p in selected)]
    if "model_index.json" not in selected or missing:
        raise RuntimeError(f"{REPO_ID} listing lacks model_index.json or fp16 weights for: {missing}")
    return sorted(selected)


def select_mask_files(repo_files: list[str]) -> list[str]:
    """The CLIPSeg files the mask model needs: its configs, tokenizer files, and one weights file."""
    present = set(repo_files)
    # safetensors when the repository's main branch has them; else the original pickle, which transformers reads
    # with torch.load(weights_only=True), refusing anything but tensors.
    weights = next((name for name in MASK_MODEL_WEIGHTS if name in present), None)
    missing = sorted(name for name in MASK_CONFIG_FILES if name not in present)
    if weights is None or missing:
        raise RuntimeError(f"{MASK_REPO_ID} listing lacks {missing or list(MASK_MODEL_WEIGHTS)}")
    return sorted((present & MASK_CONFIG_FILES) | {weights})


def download_mask_model(folder: Path, repo_id: str = MASK_REPO_ID) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    snapshot_download(repo_id, allow_patterns=select_mask_files(list_repo_files(repo_id)), local_dir=str(folder))
    return folder


def hub_problem(repo_id: str = REPO_ID, timeout: float = 5.0) -> str | None:
    """None when the Hugging Face hub answers for repo_id; else why not. One short try, no retries,
    so a machine without hub access learns it in seconds rather than after the download's retries."""
    import httpx
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = f"{constants.ENDPOINT}/api/models/{repo_id}"
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        return f"the Hugging Face hub ({constants.ENDPOINT}) is unreachable: {type(exc).__name__}: {exc}"
    if response.status_code >= 400:
        return f"the Hugging Face hub answered HTTP {response.status_code} for {repo_id}"
    return None


def download(model_dir: Path, safety_checker: bool = True, repo_id: str = REPO_ID, mask_model: bool = True) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    files = select_files(list_repo_files(repo_id), safety_checker=safety_checker)
    snapshot_download(repo_id, allow_patterns=files, local_dir=str(model_dir))
    if not safety_checker:
        # Keep model_index.json consistent with what is on disk.
        import json

        index_path = model_dir / "model_index.json"
        index = json.loads(index_path.read_text())
        index["safety_checker"] = [None, None]
        index["feature_extractor"] = [None, None]
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    if mask_model:
        download_mask_model(model_dir / MASK_MODEL_FOLDER)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--no-safety-checker", action="store_true", help="skip the safety checker (~600 MB)")
    parser.add_argument("--no-mask-model", action="store_true",
                        help="skip the mask model (~600 MB); requests with mask_prompt then fail")
    args = parser.parse_args(argv)
    try:
        path = download(args.model_dir, safety_checker=not args.no_safety_checker, mask_model=not args.no_mask_model)
    except Exception as exc:
        print(f"error: could not fetch {REPO_ID} into {args.model_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"weights ready in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
