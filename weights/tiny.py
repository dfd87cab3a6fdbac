"""Generate a tiny random-weight SD1.5-inpainting model in the Hugging Face layout.

Same on-disk layout as stable-diffusion-v1-5/stable-diffusion-inpainting
(model_index.json + component folders), same structure where it matters
(9-channel UNet, VAE with 4 blocks so latents are 1/8 of the image, CLIP text
encoder and tokenizer, PNDM scheduler config of SD1.5), but tiny, so the real
diffusers pipeline runs a 512x512 request in about a second on a laptop CPU.
Nothing is downloaded: the tokenizer is written from a byte-level vocabulary
built here. Deterministic: the same seed gives the same files.

Beside it, in the `clipseg` folder, a tiny random-weight CLIPSeg in the layout of
CIDAS/clipseg-rd64-refined (the mask model behind mask_prompt): what it finds is
arbitrary, but it runs the real transformers code on the real input sizes.

    python -m weights.tiny OUT_DIR [--safety-checker none|pass|flag]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from weights import MASK_MODEL_FOLDER

# The SD1.5 scheduler config (scheduler/scheduler_config.json of the real model).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

TEXT_DIM = 32
MAX_TOKENS = 77

# preprocessor_config.json of CIDAS/clipseg-rd64-refined: the picture is resized to 352x352, ImageNet-normalised.
CLIPSEG_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "processor_class": "CLIPSegProcessor",
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 352, "width": 352},
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(folder: Path, processor_class: str | None = None) -> int:
    """A CLIP tokenizer whose vocabulary is every byte, alone and word-final. Returns vocab size."""
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }
    if processor_class:
        config["processor_class"] = processor_class
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def build_mask_model(out_dir: Path, seed: int = 0, full_size: bool = False) -> Path:
    """A random-weight CLIPSeg in the layout of CIDAS/clipseg-rd64-refined: config.json, model.safetensors,
    preprocessor_config.json and the CLIP tokenizer files. Tiny by default; `full_size`: the real model's shapes
    (about 600 MB, for timing)."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    out_dir = Path(out_dir)
    vocab_size = write_tokenizer(out_dir, processor_class="CLIPSegProcessor")
    special = dict(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    if full_size:  # CIDAS/clipseg-rd64-refined's config: CLIP ViT-B/16 with a 64-wide decoder on layers 3, 6, 9
        config = CLIPSegConfig(text_config=dict(vocab_size=49408, **special), vision_config=dict(patch_size=16),
                               reduce_dim=64, extract_layers=[3, 6, 9], use_complex_transposed_convolution=True)
    else:
        config = CLIPSegConfig(
            text_config=dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=MAX_TOKENS, **special),
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                               image_size=224, patch_size=16),
            projection_dim=16, extract_layers=[1, 2], reduce_dim=8, decoder_num_attention_heads=2,
            decoder_intermediate_size=16, use_complex_transposed_convolution=True)
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config)
    if not full_size:
        # Random weights give logits of about +-200, so every score is 0 or 1. Scaled down, the scores spread over
        # the middle of 0..1 as a trained model's do, and thresholds mean something (0.95 finds nothing).
        with torch.no_grad():
            for parameter in model.decoder.transposed_convolution[-1].parameters():
                parameter.mul_(0.01)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(CLIPSEG_PREPROCESSOR, indent=2) + "\n")
    return out_dir


def build(out_dir: Path, safety_checker: str = "none", seed: int = 0) -> Path:
    import inference  # noqa: F401  (first: importing it filters transformers' notice about torchvision)
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=9,  # 4 noisy latents + 1 mask + 4 masked-image latents
        out_channels=4,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        # Attention only at the two lowest resolutions keeps a 512x512 step cheap on a CPU.
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),  # 4 blocks -> 3 downsamples -> scale factor 8, as SD1.5
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=512,
        mid_block_add_attention=False,
    )
    tokenizer_dir = out_dir / "_tokenizer_src"
    vocab_size = write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)

    checker = None
    feature_extractor = None
    if safety_checker != "none":
        checker = StableDiffusionSafetyChecker(
            CLIPConfig(
                text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
                vision_config={
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "image_size": 32,
                    "patch_size": 8,
                },
                projection_dim=16,
            )
        )
        # The checker flags an image when cosine(image, concept) - threshold > 0.
        # Thresholds far below any cosine force a flag; far above, never.
        with torch.no_grad():
            level = -10.0 if safety_checker == "flag" else 10.0
            checker.concept_embeds_weights.fill_(level)
            checker.special_care_embeds_weights.fill_(10.0)
        feature_extractor = CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
        )

    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=checker,
        feature_extractor=feature_extractor,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    # Keep the real model's layout: tokenizer as vocab.json + merges.txt (not a
    # tokenizers JSON) and the feature extractor under its usual class name.
    shutil.rmtree(out_dir / "tokenizer")
    tokenizer_dir.rename(out_dir / "tokenizer")
    index_path = out_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    if index.get("feature_extractor", [None])[0]:
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    build_mask_model(out_dir / MASK_MODEL_FOLDER, seed)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--safety-checker", choices=["none", "pass", "flag"], default="none",
                        help="include a tiny safety checker that never flags (pass) or always flags (flag)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.out_dir, args.safety_checker, args.seed)
    print(f"tiny random-weight model written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
