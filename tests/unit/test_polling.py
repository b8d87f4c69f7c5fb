"""poll_until: the one polling loop (fake clock and sleep: no real waiting)."""

from __future__ import annotations

import pytest

from lib.polling import poll_until


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_returns_the_first_truthy_answer():
    clock, answers = Clock(), iter([None, 0, "up"])
    assert poll_until(lambda: next(answers), 60, 5, sleep=clock.sleep, clock=clock) == "up"
    assert clock.sleeps == [5, 5]


def test_gives_up_without_sleeping_past_the_timeout():
    clock = Clock()
    calls = []
    assert poll_until(lambda: calls.append(clock.t), 12, 5, sleep=clock.sleep, clock=clock) is None
    assert calls == [0, 5, 10] and clock.t == 10  # a third sleep would end after the timeout


def test_always_asks_once_and_refuses_a_zero_interval():
    clock = Clock()
    assert poll_until(lambda: True, 0, 1, sleep=clock.sleep, clock=clock) is True
    with pytest.raises(ValueError):
        poll_until(lambda: True, 10, 0)
