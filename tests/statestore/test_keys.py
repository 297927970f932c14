"""Key layout: prefix, hash tags (one Cluster slot per response / per session), escaping."""

from __future__ import annotations

from redis.crc import key_slot

from statestore.keys import RedisKeys, escape_part


def test_layout_uses_prefix_and_hash_tags() -> None:
    keys = RedisKeys("rwg")
    assert keys.response("g1", "resp_1") == ("rwg:{r:g1:resp_1}:acct", "rwg:{r:g1:resp_1}:pend")
    assert keys.session("g1", "sess") == ("rwg:{s:g1:sess}:last", "rwg:{s:g1:sess}:ts")


def test_keys_of_one_response_and_of_one_session_share_a_slot() -> None:
    keys = RedisKeys("rwg")
    for rid in ("resp_1", "resp_}weird{", "x" * 200):
        acct, pend = keys.response("g", rid)
        assert key_slot(acct.encode()) == key_slot(pend.encode())
    last, ts = keys.session("g", "s}1")
    assert key_slot(last.encode()) == key_slot(ts.encode())


def test_groups_cannot_collide_through_separators() -> None:
    keys = RedisKeys("rwg")
    # Unescaped, both would be "rwg:{s:a:b:c}:last".
    assert keys.session("a:b", "c") != keys.session("a", "b:c")
    assert keys.response("a:b", "c") != keys.response("a", "b:c")


def test_escaping_is_injective_and_a_no_op_for_plain_ids() -> None:
    assert escape_part("resp_abc-123") == "resp_abc-123"
    assert escape_part("a:b") == "a%3Ab"
    assert escape_part("a%3Ab") == "a%253Ab"  # distinct from the escaped "a:b"
    assert escape_part("{x}") == "%7Bx%7D"
