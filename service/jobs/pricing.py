"""What a GPU second costs: Modal list prices per GPU type, overridable, and the cost of a job's GPU seconds.

No heavy imports: the web tier prices jobs without torch.

Prices are USD per second for one GPU, Modal's on-demand list price (modal.com/pricing), looked up
2026-11-24 through secondary copies of that page (the page itself was not reachable from here):
- T4 0.000164, L4 0.000222, L40S 0.000542, A100-80GB 0.000694, H100 0.001097: the per-hour figures
  ($0.5904, $0.7992, $1.9512, $2.4984, $3.9492) / 3600, from a serverless GPU pricing comparison that
  states it checked Modal's pricing page on 2026-05-07 (it also quotes H100 as $0.001097/s).
- B200 0.001736: $6.25/h in a 2026 Modal pricing guide (per-second figure derived: 6.25 / 3600).
- A10G 0.000306, A100-40GB 0.000583, H200 0.001261: NOT confirmed by a source found here; from the prices
  earlier list prices (A10G $1.10/h, A100 40GB $2.10/h) and Modal's H200 list price as last
  known. Check modal.com/pricing and override (GPU_PRICE_PER_SECOND) if they differ.
The list price leaves out the container's CPU and memory charges, region multipliers and the
non-preemptible multiplier, which Modal bills on top for some configurations.

Override: `price_table({"L4": 0.0003})`, or the env var GPU_PRICE_PER_SECOND as JSON (`{"L4": 0.0003}`)
or as `L4=0.0003,H100=0.0012`. Passed overrides win over the env var, which wins over the list.
"""

import json
import math
import os
from collections.abc import Mapping

ENV_VAR = "GPU_PRICE_PER_SECOND"

MODAL_PRICE_PER_SECOND: dict[str, float] = {
    "T4": 0.000164,
    "L4": 0.000222,
    "A10G": 0.000306,  # unconfirmed, see above
    "L40S": 0.000542,
    "A100-40GB": 0.000583,  # unconfirmed
    "A100-80GB": 0.000694,
    "H100": 0.001097,
    "H200": 0.001261,  # unconfirmed
    "B200": 0.001736,
}

# Other spellings Modal's `gpu=` argument accepts for the same price.
ALIASES = {"A10": "A10G", "A100": "A100-40GB", "H100!": "H100", "B200+": "B200"}


def normalize_gpu(name: str) -> str:
    """'h100' -> 'H100', 'a10' -> 'A10G', 'L4:2' -> 'L4' (the price is per GPU)."""
    key = name.strip().upper().split(":")[0]
    return ALIASES.get(key, key)


def gpu_from_device_name(device_name: str) -> str | None:
    """Our price key for a CUDA device name (torch.cuda.get_device_name), or None when unknown.

    'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA A100-SXM4-80GB' -> 'A100-80GB', 'Tesla T4' -> 'T4'.
    """
    name = device_name.upper().replace("NVIDIA", " ").replace("TESLA", " ")
    words = name.replace("-", " ").split()
    if "A100" in words:
        return "A100-80GB" if "80GB" in words else "A100-40GB"
    for key in ("B200", "H200", "H100", "L40S", "A10G", "L4", "T4"):
        if key in words:
            return key
    if "A10" in words:
        return "A10G"
    return None


def parse_overrides(raw: str) -> dict[str, float]:
    """GPU_PRICE_PER_SECOND's value: a JSON object or `GPU=price,GPU=price`."""
    raw = raw.strip()
    if not raw:
        return {}
    if raw.startswith("{"):
        try:
            pairs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_VAR}: not valid JSON ({exc})") from None
        if not isinstance(pairs, dict):
            raise ValueError(f"{ENV_VAR}: expected a JSON object of GPU type to USD per second")
        items = list(pairs.items())
    else:
        items = []
        for part in raw.split(","):
            gpu, sep, price = part.partition("=")
            if not sep or not gpu.strip():
                raise ValueError(f"{ENV_VAR}: {part.strip()!r} is not GPU=price (e.g. L4=0.000222)")
            items.append((gpu, price))
    return {normalize_gpu(str(gpu)): _price(gpu, price) for gpu, price in items}


def _price(gpu, value) -> float:
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{ENV_VAR}: price for {gpu!s} must be a number of USD per second, got {value!r}") from None
    if not 0 <= price < math.inf:  # also refuses NaN, and 1e999, which float() reads as infinity
        raise ValueError(f"{ENV_VAR}: price for {gpu!s} must be a finite number >= 0, got {value!r}")
    return price


def price_table(overrides: Mapping[str, float] | None = None, env: Mapping[str, str] | None = None) -> dict[str, float]:
    """The list prices, updated from GPU_PRICE_PER_SECOND (in `env`, default os.environ), then from `overrides`."""
    env = os.environ if env is None else env
    table = dict(MODAL_PRICE_PER_SECOND)
    table.update(parse_overrides(env.get(ENV_VAR, "")))
    for gpu, price in (overrides or {}).items():
        table[normalize_gpu(gpu)] = _price(gpu, price)
    return table


def price_per_second(gpu: str, table: Mapping[str, float] | None = None) -> float:
    table = price_table() if table is None else table
    key = normalize_gpu(gpu)
    if key not in table:
        raise ValueError(f"no price for GPU type {gpu!r}; known: {', '.join(sorted(table))} "
                         f"(add one with {ENV_VAR}, e.g. {key}=0.0005)")
    return table[key]


def gpu_count(gpu: str) -> int:
    """'L4:2' -> 2, 'L4' -> 1: the GPUs a container holds (and is billed for)."""
    _, sep, count = gpu.strip().partition(":")
    return int(count) if sep and count.isdigit() else 1


def job_cost(gpu_seconds: float, gpu: str, table: Mapping[str, float] | None = None) -> float:
    """USD for `gpu_seconds` of a container with `gpu` ('L4', or 'L4:2' for two, both billed though a job uses
    one). A batch's jobs each pass their share of the batch's seconds."""
    if not gpu_seconds >= 0:
        raise ValueError(f"gpu_seconds must be >= 0, got {gpu_seconds!r}")
    return gpu_seconds * price_per_second(gpu, table) * gpu_count(gpu)
