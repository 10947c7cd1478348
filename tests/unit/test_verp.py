"""VERP return paths: round trips, case folding by MTAs, forged MACs, Odoo ≤ 14's own form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bounce import verp

SECRET = b"s3cret-for-tests"
ULID = "01HZX3K9V7Q2M8R4T6W0Y5B1CD"


def test_round_trip_of_a_ulid() -> None:
    address = verp.encode("bounce", "example.com", ULID, 3, SECRET)
    local, _, domain = address.rpartition("@")
    assert domain == "example.com"
    assert local.startswith("bounce+")
    token = local.split("+", 1)[1]
    assert len(token) < 40
    assert re.fullmatch(r"[a-z0-9._]+", token), "local-part safe and lower case"
    assert verp.decode(address, SECRET) == verp.VerpToken(ULID, 3, True)


def test_mtas_that_change_the_case_of_local_parts_do_not_break_it() -> None:
    address = verp.encode("bounce", "example.com", ULID, 12, SECRET)
    assert verp.decode(address.upper(), SECRET) == verp.VerpToken(ULID, 12, True)
    assert verp.decode(address.lower(), SECRET) == verp.VerpToken(ULID, 12, True)
    assert verp.decode(f"<{address}>", SECRET) == verp.VerpToken(ULID, 12, True)


def test_mixed_case_queue_ids_come_back_exactly() -> None:
    for queue_id in ("aBcDeF0123", "abcdef", "ABCDEF", "0123456789", "Z" * 32, "z" * 32, "aZ" * 16):
        address = verp.encode("b", "d.example", queue_id, 0, SECRET)
        assert verp.decode(address.lower(), SECRET) == verp.VerpToken(queue_id, 0, True)


def test_a_forged_or_altered_token_is_not_valid() -> None:
    address = verp.encode("bounce", "example.com", ULID, 1, SECRET)
    # Someone changes the recipient index to mark another recipient bounced.
    local, _, domain = address.rpartition("@")
    qid, _index, mac = local.split("+", 1)[1].split(".")
    forged = f"bounce+{qid}.2.{mac}@{domain}"
    token = verp.decode(forged, SECRET)
    assert token is not None and token.valid is False and token.rcpt_index == 2
    assert verp.decode(address, b"another secret") == verp.VerpToken(ULID, 1, False)
    assert verp.decode(address, None) == verp.VerpToken(ULID, 1, False)


@pytest.mark.parametrize("address", [
    "bounce@example.com", "bounce+@example.com", "bounce+hello@example.com", "not an address",
    "bounce+01hzx.1.zzzzzzzz@example.com",  # well formed, wrong MAC
    "bounce+12-res.partner-5@example.com",
])
def test_what_is_not_a_token(address: str) -> None:
    token = verp.decode(address, SECRET)
    assert token is None or token.valid is False


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError):
        verp.encode("bounce", "example.com", "has-dash", 0, SECRET)
    with pytest.raises(ValueError):
        verp.encode("bounce", "example.com", "x" * 33, 0, SECRET)
    with pytest.raises(ValueError):
        verp.encode("bounce", "example.com", ULID, -1, SECRET)
    with pytest.raises(ValueError):
        verp.encode("bounce", "example.com", ULID, 0, b"")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1,
               max_size=32), st.integers(min_value=0, max_value=10**6))
def test_any_queue_id_round_trips(queue_id: str, index: int) -> None:
    address = verp.encode("bounce", "example.org", queue_id, index, SECRET)
    assert verp.decode(address.lower(), SECRET) == verp.VerpToken(queue_id, index, True)


@given(st.text(max_size=80))
def test_decode_never_raises(address: str) -> None:
    verp.decode(address, SECRET)
    verp.decode_legacy(address)


def test_odoo_14_return_paths() -> None:
    assert verp.decode_legacy("bounce+42-res.partner-7@example.com") == verp.LegacyVerp(42, "res.partner", 7)
    assert verp.decode_legacy("catchall+9-mail.test.gateway-1@x.example") == verp.LegacyVerp(
        9, "mail.test.gateway", 1)
    assert verp.decode_legacy("bounce+42@example.com") == verp.LegacyVerp(42, None, None)
    assert verp.decode_legacy("bounce@example.com") is None
    assert verp.decode_legacy("bounce+abc-res.partner-7@example.com") is None
    # A new-style token is not a legacy one.
    assert verp.decode_legacy(verp.encode("bounce", "example.com", ULID, 1, SECRET)) is None
