"""Generator and discriminator configurations by resolution (``--generator_config`` presets)."""

from __future__ import annotations

import copy

GENERATOR_PRESETS: dict[int, dict] = {
    32: dict(sample_size=32, block_out_channels=(32, 64, 128), layers_per_block=1, attention_resolutions=(8,)),
    64: dict(sample_size=64, block_out_channels=(32, 64, 128, 128), layers_per_block=1, attention_resolutions=(16, 8)),
    128: dict(sample_size=128, block_out_channels=(32, 64, 128, 128, 256), layers_per_block=1, attention_resolutions=(16, 8)),
    256: dict(
        sample_size=256, block_out_channels=(16, 32, 64, 128, 128, 256), layers_per_block=1, attention_resolutions=(16, 8)
    ),
}
DISCRIMINATOR_PRESETS: dict[int, dict] = {
    32: dict(sample_size=32, block_out_channels=(64, 128, 256, 256)),
    64: dict(sample_size=64, block_out_channels=(32, 64, 128, 256, 256)),
    128: dict(sample_size=128, block_out_channels=(32, 64, 128, 256, 256, 256)),
    256: dict(sample_size=256, block_out_channels=(16, 32, 64, 128, 256, 256, 256)),
}


def generator_preset(resolution: int, **overrides) -> dict:
    if resolution not in GENERATOR_PRESETS:
        raise ValueError(f"no generator preset for resolution {resolution}; presets: {sorted(GENERATOR_PRESETS)}")
    return {**copy.deepcopy(GENERATOR_PRESETS[resolution]), **overrides}


def discriminator_preset(resolution: int, **overrides) -> dict:
    if resolution not in DISCRIMINATOR_PRESETS:
        raise ValueError(f"no discriminator preset for resolution {resolution}; presets: {sorted(DISCRIMINATOR_PRESETS)}")
    return {**copy.deepcopy(DISCRIMINATOR_PRESETS[resolution]), **overrides}
