"""The emulated HX711 and RPi.GPIO at pin level, on a virtual clock (no driver yet).

Each test drives PD_SCK and reads DOUT through the emulated ``RPi.GPIO`` module,
advancing a ``ManualClock`` between calls, so pulse widths and settling times are
exact.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator

import pytest

from firmware_mock.gpio import (
    A64,
    A128,
    B32,
    SETTLE_S,
    Board,
    ManualClock,
    from_code,
    install,
    uninstall,
)
from firmware_mock.gpio import rpi as GPIO

DOUT, SCK = 5, 6
US = 1e-6


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


@pytest.fixture
def board(clock: ManualClock) -> Iterator[Board]:
    b = Board(clock)
    install(b)
    GPIO.setmode(GPIO.BCM)
    yield b
    uninstall(b)


def pulse(clock: ManualClock, high_s: float = 1 * US, low_s: float = 1 * US) -> int:
    """One PD_SCK pulse; returns DOUT read after the falling edge."""
    GPIO.output(SCK, GPIO.HIGH)
    clock.advance(high_s)
    GPIO.output(SCK, GPIO.LOW)
    clock.advance(low_s)
    return GPIO.input(DOUT)


def read_word(clock: ManualClock, pulses: int = 25) -> int:
    """A whole readout: 24 data bits, then ``pulses - 24`` more; returns the signed value."""
    word = 0
    for _ in range(24):
        word = (word << 1) | pulse(clock)
    for _ in range(pulses - 24):
        pulse(clock)
    return from_code(word)


def wait_ready(clock: ManualClock, limit_s: float = 1.0, step_s: float = 0.0005) -> float:
    """Advance until DOUT goes LOW; returns the time waited."""
    waited = 0.0
    while GPIO.input(DOUT) != 0:
        clock.advance(step_s)
        waited += step_s
        if waited > limit_s:
            raise AssertionError("DOUT never went LOW")
    return waited


def setup_pins() -> None:
    GPIO.setup(SCK, GPIO.OUT, initial=GPIO.LOW)
    GPIO.setup(DOUT, GPIO.IN)


@pytest.mark.parametrize("value", [123456, -123456, 0, -1, 1, 0x7FFFFE, -0x7FFFFF])
def test_bits_are_24_bit_twos_complement_msb_first(
    board: Board, clock: ManualClock, value: int
) -> None:
    board.add_hx711(DOUT, SCK, lambda t: value)
    setup_pins()
    wait_ready(clock)
    assert read_word(clock) == value
    assert GPIO.input(DOUT) == 1  # the 25th pulse pulled DOUT high


def test_dout_low_only_when_a_conversion_is_ready(board: Board, clock: ManualClock) -> None:
    chip = board.add_hx711(DOUT, SCK, lambda t: 42, rate_hz=80.0)
    setup_pins()
    wait_ready(clock)
    read_word(clock)
    waited = wait_ready(clock, step_s=0.0001)
    assert waited == pytest.approx(1 / 80, abs=0.0002)  # the next conversion, 12.5 ms later
    assert chip.reads == 1


@pytest.mark.parametrize(
    ("pulses", "setting", "expected"),
    [(25, A128, 200000), (26, B32, 4321), (27, A64, 100000)],
)
def test_pulse_count_selects_channel_and_gain_of_next_conversion(
    board: Board, clock: ManualClock, pulses: int, setting: object, expected: int
) -> None:
    chip = board.add_hx711(DOUT, SCK, lambda t: 200000, channel_b_counts=4321)
    setup_pins()
    wait_ready(clock)
    assert read_word(clock, pulses) == 200000  # this conversion was A/128 already
    assert chip.last_cycle_pulses == pulses
    assert chip.next_setting is setting
    wait_ready(clock)
    assert read_word(clock) == expected  # the NEXT conversion used the new setting
    assert chip.setting is setting
    wait_ready(clock)
    assert read_word(clock) == 200000  # 25 pulses last time: back to A/128


@pytest.mark.parametrize("rate", [10.0, 80.0])
def test_power_down_after_60us_high_and_settling_after_power_up(
    board: Board, clock: ManualClock, rate: float
) -> None:
    chip = board.add_hx711(DOUT, SCK, lambda t: 300000, rate_hz=rate)
    setup_pins()
    wait_ready(clock)
    read_word(clock, 27)  # next: A/64
    # 59 µs high: still on
    pulse(clock, high_s=59 * US)
    assert chip.powered and chip.power_downs == 0
    # more than 60 µs high: powered down, DOUT high, no conversions
    GPIO.output(SCK, GPIO.HIGH)
    clock.advance(61 * US)
    assert GPIO.input(DOUT) == 1
    assert not chip.powered
    clock.advance(2.0)
    assert GPIO.input(DOUT) == 1  # nothing while powered down
    # PD_SCK low: reset to channel A gain 128; first conversion after settling
    GPIO.output(SCK, GPIO.LOW)
    assert chip.powered and chip.power_ups == 1
    assert chip.setting is A128
    waited = wait_ready(clock, step_s=0.001)
    assert waited == pytest.approx(SETTLE_S[rate], abs=0.0015)
    assert read_word(clock) == 300000  # A/128, not the A/64 chosen before


def test_rate_pin_read_at_power_up(board: Board, clock: ManualClock) -> None:
    chip = board.add_hx711(DOUT, SCK, lambda t: 1, rate_hz=80.0, rate_pin=26)
    setup_pins()
    GPIO.setup(26, GPIO.OUT, initial=GPIO.LOW)  # RATE low: 10 SPS
    pulse(clock, high_s=100 * US)
    assert chip.rate_hz == 10.0
    assert wait_ready(clock, step_s=0.001) == pytest.approx(SETTLE_S[10.0], abs=0.0015)
    GPIO.output(26, GPIO.HIGH)
    pulse(clock, high_s=100 * US)
    assert chip.rate_hz == 80.0


def test_shared_clock_shifts_every_chip(board: Board, clock: ManualClock) -> None:
    a = board.add_hx711(DOUT, SCK, lambda t: 111)
    b = board.add_hx711(13, SCK, lambda t: -222)
    setup_pins()
    GPIO.setup(13, GPIO.IN)
    wait_ready(clock)
    word_a = word_b = 0
    for _ in range(24):
        word_a = (word_a << 1) | pulse(clock)
        word_b = (word_b << 1) | GPIO.input(13)
    pulse(clock)
    assert (from_code(word_a), from_code(word_b)) == (111, -222)
    assert a.reads == b.reads == 1


def test_faults_dead_saturated_stuck(board: Board, clock: ManualClock) -> None:
    chip = board.add_hx711(DOUT, SCK, lambda t: 5000)
    setup_pins()
    wait_ready(clock)
    assert read_word(clock) == 5000
    chip.set_fault("saturated")
    wait_ready(clock)
    assert read_word(clock) == 0x7FFFFF
    chip.set_fault("stuck", counts=-77)
    wait_ready(clock)
    assert read_word(clock) == -77
    chip.set_fault("dead", at=clock() + 0.1)
    wait_ready(clock)  # still answering before `at`
    read_word(clock)
    clock.advance(0.1)
    for _ in range(100):  # a second: DOUT stuck high, clock pulses do nothing
        clock.advance(0.01)
        assert GPIO.input(DOUT) == 1
    chip.set_fault(None)
    wait_ready(clock)
    assert read_word(clock) == 5000


def test_unfinished_readout_waits_for_the_clock_until_a_power_down(
    board: Board, clock: ManualClock
) -> None:
    values = iter(range(1000, 2000))
    chip = board.add_hx711(DOUT, SCK, lambda t: next(values))
    setup_pins()
    wait_ready(clock)
    first = 0
    for _ in range(8):
        first = (first << 1) | pulse(clock)  # a driver that stops after 8 bits ...
    clock.advance(0.5)  # ... for 40 conversion periods
    for _ in range(16):
        first = (first << 1) | pulse(clock)
    assert from_code(first) == 1000  # the chip waited: the rest of the same word
    pulse(clock)
    wait_ready(clock)
    for _ in range(8):
        pulse(clock)  # stops again after 8 bits of the next conversion
    pulse(clock, high_s=100 * US)  # a power-down resets it
    assert chip.power_downs == 1
    wait_ready(clock)
    assert read_word(clock) == chip.last_counts == 1002


def test_rpi_gpio_errors_match_rpi_gpio(clock: ManualClock) -> None:
    b = Board(clock)
    install(b)
    try:
        with pytest.raises(RuntimeError, match="set pin numbering mode"):
            GPIO.setup(5, GPIO.IN)
        GPIO.setmode(GPIO.BCM)
        with pytest.raises(ValueError, match="different mode"):
            GPIO.setmode(GPIO.BOARD)
        with pytest.raises(RuntimeError, match="You must setup"):
            GPIO.input(5)
        GPIO.setup(5, GPIO.IN, pull_up_down=GPIO.PUD_UP)
        assert GPIO.input(5) == 1
        with pytest.raises(RuntimeError, match="not been set up as an OUTPUT"):
            GPIO.output(5, 1)
        with pytest.raises(ValueError, match="invalid on a Raspberry Pi"):
            GPIO.setup(40, GPIO.OUT)
        GPIO.setup([20, 21], GPIO.OUT, initial=GPIO.HIGH)
        assert GPIO.input(20) == GPIO.input(21) == 1
        GPIO.cleanup(5)
        with pytest.raises(RuntimeError, match="You must setup"):
            GPIO.input(5)
        GPIO.cleanup()
        assert GPIO.getmode() is None
        GPIO.setmode(GPIO.BOARD)  # physical pin 11 is BCM 17
        GPIO.setup(11, GPIO.OUT, initial=GPIO.HIGH)
        assert b.wire_level(17) == 1
    finally:
        uninstall(b)


def test_install_makes_import_rpi_gpio_drive_the_board(clock: ManualClock) -> None:
    before = sys.modules.get("RPi.GPIO")
    b = Board(clock)
    install(b)
    try:
        import RPi.GPIO as imported

        assert imported is GPIO
        imported.setmode(imported.BCM)
        imported.setup(17, imported.OUT, initial=imported.HIGH)
        assert b.wire_level(17) == 1
    finally:
        uninstall(b)
    assert sys.modules.get("RPi.GPIO") is before
    with pytest.raises(RuntimeError, match="no emulated GPIO board"):
        GPIO.input(17)


def test_reed_switch_bounces_then_settles(board: Board, clock: ManualClock) -> None:
    door = {"open": False}
    reed = board.add_reed_switch(27, lambda: door["open"], bounce_s=0.004, seed=3)
    GPIO.setup(27, GPIO.IN, pull_up_down=GPIO.PUD_UP)
    assert GPIO.input(27) == 0
    door["open"] = True
    levels = []
    for _ in range(60):  # 6 ms in 0.1 ms steps
        levels.append(GPIO.input(27))
        clock.advance(0.0001)
    changes = sum(1 for a, b in itertools.pairwise(levels) if a != b)
    assert changes >= 2, levels  # it bounced
    assert levels[-20:] == [1] * 20  # and settled open after 4 ms
    assert reed.changes == 1


def test_lock_relay_follows_pin_and_wiring(board: Board, clock: ManualClock) -> None:
    relay = board.add_lock_relay(17, active_low=True, fail_safe=False)
    assert not relay.energised and relay.locked  # pin not driven: relay off
    GPIO.setup(17, GPIO.OUT, initial=GPIO.LOW)  # active low: energised
    assert relay.energised and not relay.locked
    GPIO.output(17, GPIO.HIGH)
    assert relay.locked
    GPIO.output(17, GPIO.LOW)
    GPIO.cleanup(17)  # released: a pulled-up active-low input, relay off
    assert relay.locked
    assert [e for _, e in relay.history] == [False, True, False, True, False]
