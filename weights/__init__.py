"""Model weights the product needs: the real SD1.5-inpainting download (`weights.download`, needs only
huggingface_hub) and the tiny random-weight model for the demo and tests (`weights.tiny`, needs torch)."""

# The mask model (CLIPSeg, for mask_prompt) lives in this folder of the weights directory, beside the pipeline's
# own folders; diffusers loads only what model_index.json lists, so it does not mind the extra folder.
MASK_MODEL_FOLDER = "clipseg"
MASK_MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # either; the download prefers safetensors


def has_mask_model(folder) -> bool:
    """The mask model's configs and weights are all in `folder`. The hub's download moves each file into place
    only once it is complete, and the small files land first: a download cut short has configs and no weights."""
    from pathlib import Path

    folder = Path(folder)
    return ((folder / "config.json").is_file() and (folder / "preprocessor_config.json").is_file()
            and any((folder / name).is_file() for name in MASK_MODEL_WEIGHTS))
