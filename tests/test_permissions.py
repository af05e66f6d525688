from __future__ import annotations

import pytest

from townhall.auth.permissions import MEETING_ROLES, PERMISSIONS, ROLES, permissions_for
from townhall.errors import BadRequest


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("host", {"join", "publish", "chat", "raise-hand", "moderate", "invite"}),
        ("speaker", {"join", "publish", "chat", "raise-hand"}),
        ("listener", {"join", "chat", "raise-hand"}),
        ("caption", {"join", "caption"}),
        ("admin", {"admin", "invite"}),
    ],
)
def test_each_role_has_exactly_its_named_permissions(role: str, expected: set[str]) -> None:
    assert permissions_for(role) == frozenset(expected)
    assert ROLES[role] == frozenset(expected)


def test_the_roles_are_exactly_the_five_named_ones() -> None:
    assert set(ROLES) == {"host", "speaker", "listener", "caption", "admin"}


def test_unknown_role_is_a_bad_request_naming_the_role() -> None:
    with pytest.raises(BadRequest) as info:
        permissions_for("king")
    assert str(info.value) == "unknown role: 'king'"


def test_role_names_are_case_sensitive() -> None:
    with pytest.raises(BadRequest, match="unknown role: 'Host'"):
        permissions_for("Host")


def test_meeting_roles_can_join_and_admin_is_not_a_meeting_role() -> None:
    assert MEETING_ROLES == ("host", "speaker", "listener", "caption")
    for role in MEETING_ROLES:
        assert "join" in permissions_for(role)
    assert "join" not in permissions_for("admin")


def test_only_hosts_moderate_and_only_speakers_and_hosts_publish() -> None:
    assert {r for r in ROLES if "moderate" in ROLES[r]} == {"host"}
    assert {r for r in ROLES if "publish" in ROLES[r]} == {"host", "speaker"}


def test_every_role_uses_only_known_permissions() -> None:
    for permissions in ROLES.values():
        assert permissions <= PERMISSIONS


def test_the_role_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        ROLES["listener"] = frozenset({"moderate"})  # type: ignore[index]
