"""Model weights the product needs: the real SD1.5-inpainting download (`weights.download`, needs only
huggingface_hub) and the tiny random-weight model for the demo and tests (`weights.tiny`, needs torch)."""
