"""GPU-side core: load the pipeline once, run requests. No HTTP here; the only place torch is imported.

The names below load on first use, so `inference.snapshot` can be imported (and its guard set up) before
torch and diffusers are.
"""

import logging

# Importing diffusers makes transformers note that the CLIP/Siglip image processors fall back to their
# PIL versions because torchvision is absent. That fallback is what we want (torchvision is not a
# dependency), so this one notice is dropped; every other transformers message still shows.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed)" not in record.getMessage()
)

_LAZY = {"InpaintOutput": "inference.inpainter", "Inpainter": "inference.inpainter",
         "WeightsNotFound": "inference.pipeline", "load_pipeline": "inference.pipeline"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inference' has no attribute {name!r}")
