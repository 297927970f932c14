"""gateway.auth: `Authorization: Bearer <key>` to a client identity and its group."""

from __future__ import annotations

import hashlib

import pytest

from gateway.auth import ClientDirectory
from gateway.config import ClientKey


@pytest.fixture
def directory() -> ClientDirectory:
    return ClientDirectory(
        [
            ClientKey(key="sk-team-a", group="team-a", name="alice"),
            ClientKey(key="sk-team-b", group="team-b", name="bob"),
            ClientKey(key="sk-default"),
        ]
    )


@pytest.mark.parametrize(
    ("header", "group", "name"),
    [
        ("Bearer sk-team-a", "team-a", "alice"),
        ("Bearer sk-team-b", "team-b", "bob"),
        ("Bearer sk-default", "default", ""),
        ("bearer sk-team-a", "team-a", "alice"),  # the scheme is case-insensitive
        ("BEARER sk-team-b", "team-b", "bob"),
        ("Bearer  sk-team-a ", "team-a", "alice"),  # stray whitespace around the token
    ],
)
def test_known_keys_map_to_their_group(
    directory: ClientDirectory, header: str, group: str, name: str
) -> None:
    ident = directory.authenticate(header)
    assert ident is not None
    assert (ident.group, ident.name) == (group, name)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic c2stdGVhbS1hOg==",
        "Token sk-team-a",
        "sk-team-a",  # no scheme at all
        "Bearer sk-team-",  # a prefix of a real key
        "Bearer sk-team-aa",
        "Bearer SK-TEAM-A",  # keys are case-sensitive
        "Bearer sk-unknown",
    ],
)
def test_refused(directory: ClientDirectory, header: str | None) -> None:
    assert directory.authenticate(header) is None


def test_key_id_is_a_short_non_secret_fingerprint(directory: ClientDirectory) -> None:
    ident = directory.authenticate("Bearer sk-team-a")
    assert ident is not None
    assert ident.key_id == hashlib.sha256(b"sk-team-a").hexdigest()[:8]
    assert "sk-team-a" not in ident.key_id
    other = directory.authenticate("Bearer sk-team-b")
    assert other is not None and other.key_id != ident.key_id


def test_empty_directory_refuses_everything() -> None:
    assert ClientDirectory([]).authenticate("Bearer anything") is None
