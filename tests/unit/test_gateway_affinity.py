"""Which gateway takes a contended app's commands (services/gateway/affinity.py)."""

from __future__ import annotations

from services.gateway.affinity import Affinity


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_app_nobody_else_appends_to_stays_here() -> None:
    affinity = Affinity("bbbb", clock=Clock())
    assert affinity.contended("shop") is None
    affinity.wrote("aaaa", ["app-other", "hostname-www.shop.test"])
    assert affinity.contended("shop") is None and affinity.owner("shop") is None


def test_a_gateway_that_loses_the_stream_hands_the_app_to_the_winner() -> None:
    affinity = Affinity("aaaa", clock=Clock())
    affinity.wrote("bbbb", ["app-shop"])
    assert affinity.contended("shop") == "bbbb"
    assert affinity.owner("shop") == "bbbb" and affinity.owner("other") is None


def test_two_gateways_handing_the_app_to_each_other_leave_it_to_the_smaller_id() -> None:
    clock = Clock()
    low, high = Affinity("aaaa", clock=clock), Affinity("bbbb", clock=clock)
    low.wrote("bbbb", ["app-shop"])
    high.wrote("aaaa", ["app-shop"])
    assert low.contended("shop") == "bbbb" and high.contended("shop") == "aaaa"
    high.handed_over("shop", "aaaa")  # the larger id keeps handing it over
    low.handed_over("shop", "bbbb")  # the smaller id takes it back
    assert low.owner("shop") is None and high.owner("shop") == "aaaa"


def test_the_claim_lasts_while_the_owner_keeps_appending_to_the_app() -> None:
    clock = Clock()
    affinity = Affinity("bbbb", clock=clock, window_s=2.0)
    affinity.wrote("aaaa", ["app-shop"])
    affinity.contended("shop")
    clock.now += 1.5
    affinity.wrote("aaaa", ["app-shop"])  # the owner appended the forwarded commands
    clock.now += 1.5
    assert affinity.owner("shop") == "aaaa"
    clock.now += 2.5  # nothing from the owner for longer than the window: take it back
    assert affinity.owner("shop") is None
    assert affinity.contended("shop") is None  # and a stale writer is no contention


def test_an_owner_that_does_not_answer_is_forgotten() -> None:
    affinity = Affinity("bbbb", clock=Clock())
    affinity.wrote("aaaa", ["app-shop"])
    assert affinity.contended("shop") == "aaaa"
    affinity.forget("shop", "aaaa")
    assert affinity.owner("shop") is None and affinity.contended("shop") is None


def test_the_apps_remembered_are_bounded() -> None:
    affinity = Affinity("bbbb", clock=Clock(), max_apps=3)
    affinity.wrote("aaaa", [f"app-a{i}" for i in range(10)])
    assert [affinity.contended(f"a{i}") for i in range(10)] == [None] * 7 + ["aaaa"] * 3


def test_the_smaller_id_does_not_hand_back_an_app_it_is_being_handed() -> None:
    """Its appends still lose to the commands the other gateway had in flight: those drain."""
    clock = Clock()
    low = Affinity("aaaa", clock=clock, window_s=2.0)
    low.wrote("bbbb", ["app-shop"])
    low.handed_over("shop", "bbbb")
    assert low.contended("shop") is None and low.owner("shop") is None
    high = Affinity("cccc", clock=clock, window_s=2.0)
    high.wrote("bbbb", ["app-shop"])
    high.handed_over("shop", "bbbb")  # a larger id hands the app to the smaller one
    assert high.contended("shop") == "bbbb"
    clock.now += 3.0  # the hand-over is old news: the winner of the stream takes the app
    low.wrote("bbbb", ["app-shop"])
    assert low.contended("shop") == "bbbb"
