"""Last-N: who receives whose camera, from the order of recent dominant speakers and pins."""

from __future__ import annotations

from townhall.rooms.forwarding import SpeakerOrder, cameras_for


def _order(*joined: str) -> SpeakerOrder:
    order = SpeakerOrder()
    for participant in joined:
        order.joined(participant)
    return order


def test_before_anyone_speaks_the_first_to_join_are_received() -> None:
    order = _order("a", "b", "c", "d", "e")
    assert order.ranking() == ["a", "b", "c", "d", "e"]
    assert cameras_for("e", order.ranking(), {"a", "b", "c", "d", "e"}, 3) == {"a", "b", "c"}


def test_the_viewer_never_takes_one_of_its_own_places() -> None:
    order = _order("a", "b", "c", "d")
    assert cameras_for("a", order.ranking(), {"a", "b", "c", "d"}, 2) == {"b", "c"}


def test_a_new_dominant_speaker_moves_to_the_front_and_pushes_the_last_out() -> None:
    order = _order("a", "b", "c", "d", "e")
    assert order.spoke("e") is True
    assert order.spoke("e") is False, "speaking again while first changes nothing"
    assert order.ranking() == ["e", "a", "b", "c", "d"]
    assert cameras_for("b", order.ranking(), set("abcde"), 3) == {"e", "a", "c"}
    order.spoke("c")
    assert order.ranking() == ["c", "e", "a", "b", "d"]


def test_participants_without_a_camera_take_no_place() -> None:
    order = _order("a", "b", "c", "d")
    order.spoke("b")
    assert cameras_for("d", order.ranking(), {"a", "c", "d"}, 2) == {"a", "c"}


def test_pinned_participants_come_on_top_of_the_last_n() -> None:
    order = _order("a", "b", "c", "d", "e")
    chosen = cameras_for("a", order.ranking(), set("abcde"), 2, pins={"e", "a", "zz"})
    assert chosen == {"b", "c", "e"}, "pins add to N; self and unknown pins are ignored"


def test_leaving_removes_a_participant_from_the_order() -> None:
    order = _order("a", "b", "c")
    order.spoke("b")
    order.left("b")
    assert order.ranking() == ["a", "c"]
    assert order.spoke("zz") is False, "someone not in the meeting cannot take a place"
    assert order.ranking() == ["a", "c"]
