"""Every rule of the parameter table in docs/API.md, on the request model."""

import json

import pytest
from pydantic import ValidationError

from schemas import SCHEDULERS, InpaintRequest, JobStatus, describe_validation_error

BASE = {"image": "https://example.com/a.png", "mask": "https://example.com/m.png", "prompt": "a red chair"}


def errors_for(**changes):
    body = {**BASE, **changes}
    body = {k: v for k, v in body.items() if v is not ...}
    with pytest.raises(ValidationError) as info:
        InpaintRequest.model_validate_json(json.dumps(body))
    return describe_validation_error(info.value)


def test_defaults_match_contract():
    req = InpaintRequest.model_validate(BASE)
    assert req.negative_prompt == ""
    assert req.samples == 1
    assert req.scheduler == "DDIM"
    assert req.num_inference_steps == 20
    assert req.guidance_scale == 7.5
    assert req.strength == 1
    assert req.seed == -1
    assert (req.img_width, req.img_height) == (512, 512)
    assert req.base64 is False
    assert req.output_format == "jpeg"
    assert req.webhook_url is None
    assert (req.original_size, req.only_masked) == (False, False)
    assert (req.mask_padding, req.mask_grow, req.mask_blur) == (32, 0, None)


@pytest.mark.parametrize("name", ["image", "mask", "prompt"])
def test_required(name):
    message, field = errors_for(**{name: ...})
    assert field == name
    assert f"parameter '{name}' is required" in message


@pytest.mark.parametrize("name", ["image", "mask", "prompt"])
def test_blank_refused(name):
    message, field = errors_for(**{name: "   "})
    assert field == name and name in message


def test_unknown_parameter_is_named():
    message, field = errors_for(num_inference_step=25)
    assert field == "num_inference_step"
    assert "unknown parameter 'num_inference_step'" in message


@pytest.mark.parametrize(
    "name, bad, good",
    [
        ("samples", [0, 5], [1, 4]),
        ("num_inference_steps", [19, 101], [20, 100]),
        ("guidance_scale", [0.09, 25.01], [0.1, 25]),
        ("strength", [0.09, 1.01], [0.1, 1]),
        ("seed", [-2, 2**63], [-1, 0, 2**63 - 1]),
        ("img_width", [256, 513, 1024], [512, 768]),
        ("img_height", [256, 640], [512, 768]),
        ("mask_padding", [-1, 1025], [0, 1024]),
        ("mask_grow", [-1, 129], [0, 128]),
        ("mask_blur", [-1, 65], [None, 0, 64]),
    ],
)
def test_ranges(name, bad, good):
    for value in bad:
        message, field = errors_for(**{name: value})
        assert field == name, value
        assert f"parameter '{name}'" in message
    for value in good:
        assert getattr(InpaintRequest.model_validate({**BASE, name: value}), name) == value


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_name_accepted(name):
    assert InpaintRequest.model_validate({**BASE, "scheduler": name}).scheduler == name


def test_bad_enums():
    message, field = errors_for(scheduler="euler")
    assert field == "scheduler" and "DDIM" in message
    message, field = errors_for(output_format="gif")
    assert field == "output_format"


@pytest.mark.parametrize(
    "name, value",
    [("samples", "2"), ("samples", 1.5), ("samples", True), ("guidance_scale", "7.5"), ("prompt", 5),
     ("base64", "true"), ("seed", "1"), ("img_width", "512"), ("original_size", "true"), ("only_masked", 1),
     ("mask_padding", 32.0), ("mask_padding", True), ("mask_grow", "4"), ("mask_blur", 2.5)],
)
def test_wrong_types(name, value):
    message, field = errors_for(**{name: value})
    assert field == name and f"parameter '{name}'" in message


def test_integer_accepted_for_numbers():
    req = InpaintRequest.model_validate_json(json.dumps({**BASE, "guidance_scale": 7, "strength": 1}))
    assert req.guidance_scale == 7.0 and req.strength == 1.0


def test_long_prompt_is_not_an_error_up_to_the_cap():
    assert InpaintRequest.model_validate({**BASE, "prompt": "word " * 200})  # past CLIP's 77 tokens


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_over_the_cap_is_refused_naming_the_field(field):
    with pytest.raises(ValidationError) as refused:
        InpaintRequest.model_validate({**BASE, field: "x" * 1001})
    message, where = describe_validation_error(refused.value)
    assert where == field and "at most 1000 characters" in message


def test_several_errors_reported_together():
    message, _ = errors_for(samples=9, scheduler="x", extra_thing=1)
    assert "samples" in message and "scheduler" in message and "extra_thing" in message


def test_status_order():
    assert JobStatus.QUEUED.rank < JobStatus.PROCESSING.rank < JobStatus.COMPLETED.rank
    assert JobStatus.FAILED.terminal and JobStatus.COMPLETED.terminal and not JobStatus.PROCESSING.terminal
