"""service/pricing.py: list prices, overrides, device-name mapping, job cost."""

import pytest

from service.jobs import pricing


def test_every_modal_gpu_type_has_a_positive_price():
    table = pricing.price_table(env={})
    assert set(table) == {"T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "B200"}
    assert all(price > 0 for price in table.values())
    # Dearer GPUs cost more per second: a sanity check on the transcription.
    order = ["T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "B200"]
    assert [table[g] for g in order] == sorted(table[g] for g in order)


def test_job_cost_is_seconds_times_the_gpu_price():
    assert pricing.job_cost(10, "H100", pricing.price_table(env={})) == pytest.approx(10 * 0.001097)
    assert pricing.job_cost(0, "l4", pricing.price_table(env={})) == 0
    # Modal's other spellings price the same GPU.
    table = pricing.price_table(env={})
    assert pricing.job_cost(2, "A10", table) == pricing.job_cost(2, "A10G", table)
    assert pricing.job_cost(2, "L4:2", table) == 2 * pricing.job_cost(2, "L4", table)  # both GPUs are billed


def test_env_var_overrides_in_both_formats_and_passed_overrides_win():
    table = pricing.price_table(env={"GPU_PRICE_PER_SECOND": "l4=0.0003, H100=0.002"})
    assert table["L4"] == 0.0003 and table["H100"] == 0.002 and table["T4"] == 0.000164
    table = pricing.price_table(env={"GPU_PRICE_PER_SECOND": '{"RTX-PRO-6000": 0.0009}'})
    assert table["RTX-PRO-6000"] == 0.0009
    table = pricing.price_table({"L4": 0.0004}, env={"GPU_PRICE_PER_SECOND": "L4=0.0003"})
    assert table["L4"] == 0.0004


@pytest.mark.parametrize("raw, problem", [
    ("L4", "is not GPU=price"),
    ("L4=cheap", "must be a number"),
    ("L4=-1", "must be a finite number >= 0"),
    ("L4=1e999", "must be a finite number >= 0"),  # float() reads it as infinity: every priced answer would fail
    ('{"L4": NaN}', "must be a finite number >= 0"),
    ('{"L4": ', "not valid JSON"),
    ("[1, 2]", "is not GPU=price"),
])
def test_bad_env_var_is_refused_with_the_variable_named(raw, problem):
    with pytest.raises(ValueError, match=f"GPU_PRICE_PER_SECOND.*{problem}"):
        pricing.price_table(env={"GPU_PRICE_PER_SECOND": raw})


def test_unknown_gpu_and_negative_seconds_are_refused():
    with pytest.raises(ValueError, match="no price for GPU type 'V100'.*known: A100-40GB"):
        pricing.job_cost(1, "V100", pricing.price_table(env={}))
    with pytest.raises(ValueError, match="gpu_seconds must be >= 0"):
        pricing.job_cost(-1, "L4")


@pytest.mark.parametrize("device, gpu", [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA B200", "B200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10G"),
    ("NVIDIA L4", "L4"),
    ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_device_names_map_to_price_keys(device, gpu):
    assert pricing.gpu_from_device_name(device) == gpu


def test_settings_price_jobs_with_overrides_and_refuse_what_cannot_be_priced():
    from pydantic import ValidationError

    from service.config import Settings

    assert Settings(gpu_type="L4", gpu_price_per_second="L4=0.001").price_table()["L4"] == 0.001
    assert Settings(gpu_type="Z9", gpu_price_per_second="Z9=0.1").price_table()["Z9"] == 0.1
    with pytest.raises(ValidationError, match="no price for GPU type 'Z9'"):
        Settings(gpu_type="Z9")
    with pytest.raises(ValidationError, match="is not GPU=price"):
        Settings(gpu_price_per_second="L4:abc")
