"""The real diffusers pipeline on the tiny random-weight model."""

import numpy as np
import pytest

from inference import Inpainter
from inference.schedulers import SCHEDULER_TABLE
from schemas import SCHEDULERS, InpaintRequest
from tests.images import box_mask, gradient_image, png_bytes

IMAGE = gradient_image()
MASK = box_mask()


def request(**kw) -> InpaintRequest:
    return InpaintRequest(image="unused", mask="unused", prompt="a red chair", **kw)


def test_scheduler_table_matches_contract():
    assert set(SCHEDULER_TABLE) == set(SCHEDULERS)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs(inpainter, name):
    steps = []
    out = inpainter.run(request(scheduler=name, seed=7), IMAGE, MASK, on_step=lambda s, t: steps.append((s, t)))
    assert len(out.images) == 1 and out.images[0].size == (512, 512)
    assert out.seeds == [7]
    assert steps and steps[-1][0] == steps[-1][1] == out.steps_run
    assert type(inpainter.pipe.scheduler).__name__ == SCHEDULER_TABLE[name][0]


@pytest.mark.parametrize("name", ["DDIM", "Euler a", "DPM2 a Karras", "DDPM"])
def test_same_seed_same_bytes_different_seed_different(inpainter, name):
    first = png_bytes(inpainter.run(request(scheduler=name, seed=1234), IMAGE, MASK).images[0])
    again = png_bytes(inpainter.run(request(scheduler=name, seed=1234), IMAGE, MASK).images[0])
    other = png_bytes(inpainter.run(request(scheduler=name, seed=1235), IMAGE, MASK).images[0])
    assert first == again
    assert first != other


def test_random_seed_is_reported_and_reproduces(inpainter):
    out = inpainter.run(request(seed=-1), IMAGE, MASK)
    (seed,) = out.seeds
    assert 0 <= seed < 2**63
    again = inpainter.run(request(seed=seed), IMAGE, MASK)
    assert png_bytes(out.images[0]) == png_bytes(again.images[0])


def test_four_samples_four_seeds(inpainter):
    out = inpainter.run(request(samples=4, seed=10), IMAGE, MASK)
    assert len(out.images) == 4
    assert out.seeds == [10, 11, 12, 13]
    assert len({png_bytes(i) for i in out.images}) == 4


def test_seed_wraps_below_2_63(inpainter):
    out = inpainter.run(request(samples=2, seed=2**63 - 1), IMAGE, MASK)
    assert out.seeds == [2**63 - 1, 0]


def test_output_size_512x768(inpainter):
    out = inpainter.run(request(img_width=512, img_height=768, seed=1), IMAGE, MASK)
    assert out.images[0].size == (512, 768)


def test_inputs_of_other_sizes_are_resized(inpainter):
    out = inpainter.run(request(img_width=768, img_height=768, seed=1), gradient_image(300, 200), box_mask(100, 80, (20, 20, 60, 60)))
    assert out.images[0].size == (768, 768)


def test_strength_runs_fewer_steps(inpainter):
    full = inpainter.run(request(seed=1, strength=1.0), IMAGE, MASK)
    half = inpainter.run(request(seed=1, strength=0.5), IMAGE, MASK)
    assert full.steps_run == 20
    assert half.steps_run == 10


def test_all_black_mask_returns_input_unchanged(inpainter):
    out = inpainter.run(request(seed=1), IMAGE, box_mask(box=(0, 0, 0, 0)))
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(IMAGE))


def test_unmasked_pixels_far_from_edge_are_exact(inpainter):
    out = np.asarray(inpainter.run(request(seed=1), IMAGE, MASK).images[0]).astype(int)
    src = np.asarray(IMAGE).astype(int)
    margin = 4 * inpainter.feather_px
    far = np.ones(src.shape[:2], bool)
    far[192 - margin:320 + margin, 192 - margin:320 + margin] = False
    assert np.array_equal(out[far], src[far])
    assert np.abs(out[200:312, 200:312] - src[200:312, 200:312]).mean() > 5  # the masked area was repainted


def test_hard_edge_keeps_every_unmasked_pixel(tiny_model_dir):
    sharp = Inpainter(tiny_model_dir, feather_px=0)
    out = np.asarray(sharp.run(request(seed=1), IMAGE, MASK).images[0])
    outside = np.asarray(MASK) == 0
    assert np.array_equal(out[outside], np.asarray(IMAGE)[outside])


class JobCancelled(Exception):
    pass


def test_cancel_stops_at_a_step_and_pipeline_stays_usable(inpainter):
    seen = []

    def cancel_at_3(step, total):
        seen.append(step)
        if step == 3:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        inpainter.run(request(seed=1), IMAGE, MASK, on_step=cancel_at_3)
    assert seen == [1, 2, 3]
    assert inpainter.run(request(seed=1), IMAGE, MASK).steps_run == 20


def test_safety_checker_flag_is_reported(tiny_flagging_model_dir):
    flagged = Inpainter(tiny_flagging_model_dir)
    assert flagged.pipe.safety_checker is not None
    out = flagged.run(request(seed=1, samples=2), IMAGE, MASK)
    assert out.blocked == [True, True] and out.any_blocked


def test_safety_checker_can_be_turned_off(tiny_flagging_model_dir):
    unchecked = Inpainter(tiny_flagging_model_dir, safety_checker=False)
    assert unchecked.pipe.safety_checker is None
    assert not unchecked.run(request(seed=1), IMAGE, MASK).any_blocked


def test_missing_weights_error_names_the_fix(tmp_path):
    from inference import WeightsNotFound

    with pytest.raises(WeightsNotFound, match="weights.download"):
        Inpainter(tmp_path)


def test_loading_on_a_given_device_asks_nothing_of_cuda(tiny_model_dir, monkeypatch):
    """The Modal snapshot phase loads with device and dtype given: no CUDA query may run there."""
    import torch

    from inference import Inpainter

    def refuse(*args, **kwargs):
        raise AssertionError("CUDA was queried while loading on a given device")

    for name in ("is_available", "device_count", "current_device"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    model = Inpainter(tiny_model_dir, device="cpu", dtype=torch.float32)
    assert model.device == "cpu"
