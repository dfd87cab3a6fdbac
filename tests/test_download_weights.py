"""File selection of weights/download.py against the real repository's listing."""

import pytest

from weights.download import select_files

# The file list of stable-diffusion-v1-5/stable-diffusion-inpainting (main).
REAL_LISTING = [
    ".gitattributes", "README.md", "config.json", "model_index.json",
    "sd-v1-5-inpainting.ckpt", "v1-inpainting-inference.yaml",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
    "safety_checker/pytorch_model.fp16.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
    "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.fp16.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]


def test_selects_configs_and_fp16_safetensors_only():
    selected = select_files(REAL_LISTING)
    assert selected == sorted([
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "safety_checker/config.json", "safety_checker/model.fp16.safetensors",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    ])
    assert not any(f.endswith((".bin", ".ckpt")) for f in selected)


def test_without_safety_checker():
    selected = select_files(REAL_LISTING, safety_checker=False)
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) for f in selected)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in selected


def test_missing_fp16_weights_is_an_error():
    listing = [f for f in REAL_LISTING if f != "unet/diffusion_pytorch_model.fp16.safetensors"]
    with pytest.raises(RuntimeError, match="unet"):
        select_files(listing)


# The file list of CIDAS/clipseg-rd64-refined (main, with the safetensors conversion merged).
MASK_LISTING = [".gitattributes", "README.md", "config.json", "merges.txt", "model.safetensors",
                "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tokenizer_config.json",
                "vocab.json"]


def test_mask_model_files_prefer_safetensors():
    from weights.download import select_mask_files

    assert select_mask_files(MASK_LISTING) == sorted([
        "config.json", "merges.txt", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
        "tokenizer_config.json", "vocab.json"])
    without = [f for f in MASK_LISTING if f != "model.safetensors"]
    assert "pytorch_model.bin" in select_mask_files(without)
    with pytest.raises(RuntimeError, match="preprocessor_config.json"):
        select_mask_files([f for f in MASK_LISTING if f != "preprocessor_config.json"])


def test_tiny_mask_model_has_the_files_the_download_selects(tiny_model_dir):
    """The tiny CLIPSeg is written in the layout the real one is fetched in, so the same loader reads both."""
    from weights import MASK_MODEL_FOLDER
    from weights.download import select_mask_files

    folder = tiny_model_dir / MASK_MODEL_FOLDER
    assert select_mask_files(sorted(p.name for p in folder.iterdir())) == sorted(
        p.name for p in folder.iterdir() if p.name not in (".gitattributes", "README.md"))
