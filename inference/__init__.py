"""GPU-side core: load the pipeline once, run requests. No HTTP here; the only place torch is imported."""

import logging

# Importing diffusers makes transformers note that the CLIP/Siglip image processors fall back to their
# PIL versions because torchvision is absent. That fallback is what we want (torchvision is not a
# dependency), so this one notice is dropped; every other transformers message still shows.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed)" not in record.getMessage()
)

from inference.inpainter import InpaintOutput, Inpainter  # noqa: E402
from inference.pipeline import WeightsNotFound, load_pipeline  # noqa: E402

__all__ = ["InpaintOutput", "Inpainter", "WeightsNotFound", "load_pipeline"]
