"""Scheduler names of the contract -> diffusers schedulers, built lazily from the model's own config."""

from typing import Any

import diffusers

# name -> (diffusers class, overrides on top of the model's scheduler_config.json)
SCHEDULER_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "DPM Multi": ("DPMSolverMultistepScheduler", {}),
    "DPM Single": ("DPMSolverSinglestepScheduler", {"lower_order_final": True}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "LMS": ("LMSDiscreteScheduler", {}),  # needs scipy
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "DDPM": ("DDPMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
}
# Every stochastic scheduler above draws its noise from the `generator` the
# pipeline passes to scheduler.step (seeded per sample from the request), never
# from the global RNG, so a seed reproduces its image. (DPMSolverSDEScheduler,
# which seeds torchsde separately, is deliberately not in the table.)


class SchedulerCache:
    """Creates each scheduler the first time it is asked for, then reuses it."""

    def __init__(self, base_config: dict[str, Any]):
        self._base_config = dict(base_config)
        self._cache: dict[str, Any] = {}

    def get(self, name: str):
        if name not in self._cache:
            try:
                class_name, overrides = SCHEDULER_TABLE[name]
            except KeyError:
                raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULER_TABLE)}") from None
            scheduler_class = getattr(diffusers, class_name)
            self._cache[name] = scheduler_class.from_config(self._base_config, **overrides)
        return self._cache[name]
