"""GPU-side core: load the pipeline once, run requests. No HTTP here; the only place torch is imported."""

from inference.inpainter import InpaintOutput, Inpainter
from inference.pipeline import WeightsNotFound, load_pipeline

__all__ = ["InpaintOutput", "Inpainter", "WeightsNotFound", "load_pipeline"]
