"""Model weights the product needs: the real SD1.5-inpainting download (`weights.download`, needs only
huggingface_hub) and the tiny random-weight model for the demo and tests (`weights.tiny`, needs torch)."""

# The mask model (CLIPSeg, for mask_prompt) lives in this folder of the weights directory, beside the pipeline's
# own folders; diffusers loads only what model_index.json lists, so it does not mind the extra folder.
MASK_MODEL_FOLDER = "clipseg"
