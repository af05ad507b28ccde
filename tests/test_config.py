"""Flag validation: one table of ranges, one message shape naming the flag, its range and the value."""

from __future__ import annotations

import pytest

from trashnet_hf.core.config import DATA_RANGES, TRAIN_RANGES, ConfigError, DataConfig, Range, TrainConfig


def _outside(allowed: Range) -> list[float]:
    """A value just below and (when bounded) just above ``allowed``."""
    values = [allowed.low if allowed.low_open else allowed.low - 1]
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + 1)
    return values


@pytest.mark.parametrize(
    ("config", "name", "allowed"),
    [(DataConfig, n, r) for n, r in DATA_RANGES.items()]
    + [(TrainConfig, n, r) for n, r in TRAIN_RANGES.items()],
)
def test_every_range_names_the_flag_its_range_and_the_value(config: type, name: str, allowed: Range) -> None:
    flag = "--" + name.replace("_", "-")
    for value in _outside(allowed):
        with pytest.raises(ConfigError) as caught:
            config(**{name: value})
        message = str(caught.value)
        assert message.startswith(f"{flag} must be {allowed.describe()}") and f"got {value}." in message
        assert "\n" not in message


def test_closed_bounds_hold_and_open_ones_do_not() -> None:
    assert Range(0, 1).holds(0) and Range(0, 1).holds(1)
    assert not Range(0, 1, low_open=True).holds(0) and Range(0, 1, low_open=True).holds(1)
    assert Range(0, 1, high_open=True).holds(0) and not Range(0, 1, high_open=True).holds(1)
    assert Range(1).holds(10**9) and not Range(1).holds(0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1, got 0."),
        ({"learning_rate": 0.0}, "--learning-rate must be above 0, got 0.0."),
        ({"warmup_ratio": 1.0}, "--warmup-ratio must be in [0, 1), got 1.0."),
        ({"layer_decay": 0.0}, "--layer-decay must be in (0, 1] (1 disables it), got 0.0."),
        ({"ema_decay": 1.0}, "--ema-decay must be in [0, 1) (0 disables it), got 1.0."),
        ({"mixup_alpha": -0.1}, "--mixup-alpha must be 0 or more (0 disables it), got -0.1."),
        ({"num_workers": -1}, "--num-workers must be 0 or more, got -1."),
        ({"image_size": 8}, "--image-size must be at least 16 (pixels), got 8."),
        ({"seed": -5}, "--seed must be between 0 and 4294967295, got -5."),
        ({"crop_pct": 0.05}, "--crop-pct must be between 0.1 and 1, got 0.05."),
    ],
)
def test_range_messages_read_as_before(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**flags)
    assert str(caught.value) == message
