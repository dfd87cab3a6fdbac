"""The tiny model has the real model's on-disk layout and SD1.5's shapes."""

import json


def test_layout_matches_real_model(tiny_model_dir):
    for path in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]:
        assert (tiny_model_dir / path).is_file(), path
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"


def test_sd15_shapes(tiny_model_dir):
    unet = json.loads((tiny_model_dir / "unet/config.json").read_text())
    vae = json.loads((tiny_model_dir / "vae/config.json").read_text())
    assert unet["in_channels"] == 9 and unet["out_channels"] == 4
    assert 2 ** (len(vae["block_out_channels"]) - 1) == 8  # latents are 1/8 of the image, as SD1.5
    scheduler = json.loads((tiny_model_dir / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["beta_schedule"] == "scaled_linear"


def test_generation_is_deterministic(tiny_model_dir, tmp_path):
    from weights.tiny import build

    again = build(tmp_path / "again")
    for name in ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]:
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
