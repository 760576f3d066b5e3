"""cloud_sync: canonical JSON, signed hash-chained records, commands, acks, topics."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync import topics
from cloud_sync.canonical import (
    MAX_SAFE_INTEGER,
    b64url_decode,
    b64url_encode,
    canonical_bytes,
    parse_json,
)
from cloud_sync.errors import (
    BadSignature,
    ChainBroken,
    Expired,
    InvalidIdentifier,
    MalformedMessage,
    NotCanonical,
    Replayed,
    SyncError,
    WrongCabinet,
)
from cloud_sync.keys import Ed25519PrivateKey, private_key_from_seed
from cloud_sync.records import (
    ZERO_HASH,
    format_at,
    new_nonce,
    parse_at,
    parse_record,
    record_hash,
    seal,
    seal_ack,
    seal_command,
    signing_bytes,
    verify_ack,
    verify_chain,
    verify_command,
    verify_next,
    verify_record,
)

CAB = "cab-t-01"
KEY = private_key_from_seed(bytes(range(32)))
OTHER_KEY = private_key_from_seed(bytes(range(1, 33)))
BACKEND_KEY = private_key_from_seed(bytes(range(2, 34)))
PUB = KEY.public_key()
T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def make_chain(
    n: int,
    key: Ed25519PrivateKey = KEY,
    cabinet: str = CAB,
    start: int = 1,
    prev: str = ZERO_HASH,
) -> list[dict[str, Any]]:
    records = []
    for seq in range(start, start + n):
        kind = "sale" if seq % 3 else "event"
        body = {"i": seq, "total_fen": 100 * seq, "weight_g": 12.5 * seq, "flags": []}
        rec = seal(cabinet, seq, kind, T0 + timedelta(seconds=seq), prev, body, key)
        prev = record_hash(rec)
        records.append(rec)
    return records


def problems_at(report: Any, seq: int) -> set[str]:
    return {p.reason for p in report.problems if p.seq == seq}


# --------------------------------------------------------------- canonical JSON


def test_rfc8785_section_3_2_2_example() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_bytes(parse_json(text)) == expected.encode("utf-8")
    # section 3.2.4: the same as UTF-8 bytes; the euro sign is e2 82 ac, not escaped
    assert b"\xe2\x82\xac$\\u000f\\n" in canonical_bytes(json.loads(text))


def test_rfc8785_section_3_2_3_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_bytes(value) == expected.encode("utf-8")


# RFC 8785 appendix B: IEEE 754 bit patterns and their canonical text.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), RFC8785_NUMBERS)
def test_rfc8785_number_formatting(bits: str, text: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical_bytes(value) == text.encode()
    # and what a receiver parses back canonicalises the same
    assert canonical_bytes(parse_json(text)) == text.encode()


def test_numbers_ints_and_floats() -> None:
    assert canonical_bytes([1, 1.0, -0.0, 4.50, 1e-7, 1e21, 1e20, True, None]) == (
        b"[1,1,0,4.5,1e-7,1e+21,100000000000000000000,true,null]"
    )
    assert canonical_bytes(MAX_SAFE_INTEGER) == b"9007199254740991"


def test_strings_escapes_and_unicode() -> None:
    assert canonical_bytes('a/b\x7f\x1f\t"\\é😀') == '"a/b\x7f\\u001f\\t\\"\\\\é😀"'.encode()
    assert canonical_bytes({"b": 1, "a": {"d": [], "c": {}}}) == b'{"a":{"c":{},"d":[]},"b":1}'
    assert canonical_bytes(("x", 2)) == b'["x",2]'


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"body": {"lines": [{"weight_g": math.nan}]}}, "$.body.lines[0].weight_g", "NaN"),
        ({"a": [1, math.inf]}, "$.a[1]", "inf"),
        ({"a": -math.inf}, "$.a", "inf"),
        ({"at": datetime(2026, 1, 1)}, "$.at", "datetime"),
        ({"x": {1, 2}}, "$.x", "set"),
        ({"x": b"raw"}, "$.x", "bytes"),
        ({"n": 2**53}, "$.n", "2^53"),
        ({"odd key": {"k": -(2**60)}}, '$["odd key"].k', "2^53"),
        ({"m": {3: "x"}}, "$.m", "not a string"),
        ({"s": "bad \ud800 surrogate"}, "$.s", "surrogate"),
    ],
)
def test_not_canonical_names_the_path(value: Any, path: str, words: str) -> None:
    with pytest.raises(NotCanonical) as exc:
        canonical_bytes(value)
    assert exc.value.path == path
    assert words in str(exc.value)
    assert str(exc.value).startswith(path)
    assert isinstance(exc.value, MalformedMessage) and isinstance(exc.value, SyncError)


def test_cycle_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(NotCanonical, match="nested deeper"):
        canonical_bytes(loop)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"a": 1, "a": 2}', "duplicate"),
        ('{"a": NaN}', "NaN"),
        ("[Infinity]", "Infinity"),
        ("[1e999]", "out of range"),
        ("{", "not JSON"),
        ('"\\ud800"', "surrogate"),
        (b"\xff", "UTF-8"),
    ],
)
def test_parse_json_is_strict(text: str | bytes, words: str) -> None:
    with pytest.raises(MalformedMessage, match=words):
        parse_json(text)


def test_parse_json_big_integers_are_doubles() -> None:
    value = parse_json("[295147905179352830000, 9007199254740991]")
    assert value == [2.9514790517935283e20, 9007199254740991]
    assert isinstance(value[0], float) and isinstance(value[1], int)
    assert canonical_bytes(value) == b"[295147905179352830000,9007199254740991]"


def _reference_canonical(value: Any) -> bytes:
    """What canonical_bytes did before its fast path: the checking walk, then rfc8785."""
    import rfc8785

    from cloud_sync.canonical import _check

    _check(value, "$", 0)
    return rfc8785.dumps(value)


def _reference_parse(text: str) -> Any:
    from cloud_sync.canonical import _check, _constant, _float, _int, _pairs

    value = json.loads(
        text, object_pairs_hook=_pairs, parse_constant=_constant, parse_int=_int, parse_float=_float
    )
    _check(value, "$", 0)
    return value


_json_keys = st.text(st.characters(codec="utf-8") | st.sampled_from("\ue000\ufb33\U0001f600\r"))
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", b.to_bytes(8, "little"))[0])
    | st.text(st.characters())  # surrogates included: they must be refused the same way
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(_json_keys, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_fast_canonical_and_parse_agree_with_the_reference(value: Any) -> None:
    try:
        expected = _reference_canonical(value)
    except NotCanonical as exc:
        with pytest.raises(NotCanonical) as fast:
            canonical_bytes(value)
        assert str(fast.value) == str(exc) and fast.value.path == exc.path
        return
    assert canonical_bytes(value) == expected
    text = expected.decode("utf-8")
    parsed = parse_json(expected)
    assert canonical_bytes(parsed) == expected
    assert canonical_bytes(parse_json(text)) == expected
    assert canonical_bytes(_reference_parse(text)) == expected
    # the same text with escapes and whitespace parses to the same value
    loose = json.dumps(parsed, indent=1, ensure_ascii=True)
    assert canonical_bytes(parse_json(loose)) == expected


@pytest.mark.parametrize(
    "text",
    [
        '"\\udbff"',  # an escaped backslash before "udbff": no surrogate
        '["\\uD800", "\\ud800x"]',
        '{"a": "\\u0041"}',
        "[" * 64 + "]" * 64,
        "[" * 65 + "1" + "]" * 65,
        '{"k": ' * 70 + "1" + "}" * 70,
    ],
)
def test_parse_json_fast_checks_agree_with_the_full_walk(text: str) -> None:
    try:
        expected = canonical_bytes(_reference_parse(text))
    except (MalformedMessage, RecursionError) as exc:
        with pytest.raises(MalformedMessage):
            parse_json(text)
        assert not isinstance(exc, RecursionError)
        return
    assert canonical_bytes(parse_json(text)) == expected


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.integers(0, 999),
)
def test_parse_at_agrees_with_strptime(
    year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int
) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"
    try:
        expected: datetime | None = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        )
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(MalformedMessage):
            parse_at(text)
    else:
        assert parse_at(text) == expected
        if year >= 1000:  # strftime does not pad smaller years
            assert format_at(parse_at(text)) == text


def test_b64url_strict() -> None:
    data = bytes(range(64))
    text = b64url_encode(data)
    assert "=" not in text and len(text) == 86
    assert b64url_decode(text, length=64) == data
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # the last character carries 2 bits of data and 4 unused bits that must be zero
    sibling = alphabet[alphabet.index(text[-1]) + 1]
    assert base64.urlsafe_b64decode(text[:-1] + sibling + "==") == data  # lenient decoders agree
    for bad in (text + "=", text[:-1] + sibling, text + "\n", text.replace("-", "+"), "a"):
        if bad == text:
            continue
        with pytest.raises(MalformedMessage):
            b64url_decode(bad, length=64)
    with pytest.raises(MalformedMessage, match="expected 32"):
        b64url_decode(text, length=32)


# ------------------------------------------------------------------ time formats


def test_format_at() -> None:
    cst = timezone(timedelta(hours=8))
    assert format_at(datetime(2026, 11, 28, 18, 15, 30, 123999, tzinfo=cst)) == (
        "2026-11-28T10:15:30.123Z"
    )
    assert format_at("2026-11-28T10:15:30.000Z") == "2026-11-28T10:15:30.000Z"
    with pytest.raises(ValueError, match="naive"):
        format_at(datetime(2026, 11, 28))
    for bad in (
        "2026-11-28T10:15:30Z",
        "2026-11-28T10:15:30.123+00:00",
        "2026-02-30T00:00:00.000Z",
    ):
        with pytest.raises(MalformedMessage):
            parse_at(bad)


# ------------------------------------------------------------------------ records


def test_seal_verify_round_trip() -> None:
    body = {"session_id": "s1", "total_fen": 1380, "lines": [{"weight_g": 1001.9}]}
    rec = seal(CAB, 1, "sale", T0, ZERO_HASH, body, KEY)
    assert set(rec) == {"v", "cabinet", "seq", "kind", "at", "prev", "body", "sig"}
    assert rec["v"] == 1 and rec["at"] == "2026-11-28T10:00:00.000Z" and len(rec["sig"]) == 86
    verify_record(rec, PUB)
    body["total_fen"] = 0  # the record holds its own copy
    verify_record(rec, PUB)
    # what travels is JSON text; any formatting verifies
    wire = json.dumps(rec, indent=2, ensure_ascii=True)
    again = parse_record(wire)
    verify_record(again, PUB)
    assert record_hash(again) == record_hash(rec)
    assert signing_bytes(rec) == canonical_bytes({k: v for k, v in rec.items() if k != "sig"})
    # deterministic: same inputs, same record
    assert seal(CAB, 1, "sale", T0, ZERO_HASH, rec["body"], KEY) == rec


def test_seal_refuses_bad_arguments() -> None:
    with pytest.raises(MalformedMessage, match="seq 1"):
        seal(CAB, 1, "sale", T0, "ab" * 32, {}, KEY)
    with pytest.raises(MalformedMessage, match="seq"):
        seal(CAB, 0, "sale", T0, ZERO_HASH, {}, KEY)
    with pytest.raises(MalformedMessage, match="kind"):
        seal(CAB, 2, "refund", T0, ZERO_HASH, {}, KEY)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdentifier):
        seal("cab/01", 1, "sale", T0, ZERO_HASH, {}, KEY)
    with pytest.raises(NotCanonical, match=r"\$\.w"):
        seal(CAB, 1, "sale", T0, ZERO_HASH, {"w": math.nan}, KEY)
    with pytest.raises(ValueError, match="naive"):
        seal(CAB, 1, "sale", datetime(2026, 1, 1), ZERO_HASH, {}, KEY)


def test_verify_record_errors() -> None:
    rec = make_chain(1)[0]
    with pytest.raises(BadSignature):
        verify_record(rec, OTHER_KEY.public_key())
    tampered = {**rec, "body": {**rec["body"], "total_fen": 1}}
    with pytest.raises(BadSignature):
        verify_record(tampered, PUB)
    with pytest.raises(MalformedMessage, match="missing sig"):
        verify_record({k: v for k, v in rec.items() if k != "sig"}, PUB)
    with pytest.raises(MalformedMessage, match="unknown extra"):
        verify_record({**rec, "extra": 1}, PUB)
    with pytest.raises(MalformedMessage, match="version"):
        verify_record({**rec, "v": 2}, PUB)
    with pytest.raises(MalformedMessage, match="version"):
        verify_record({**rec, "v": True}, PUB)
    with pytest.raises(MalformedMessage, match="JSON object"):
        verify_record([rec], PUB)


def test_intact_chain() -> None:
    chain = make_chain(5)
    report = verify_chain(chain, PUB)
    assert report.ok and report.problems == ()
    assert (report.count, report.verified, report.first_seq, report.last_seq) == (5, 5, 1, 5)
    assert report.segments == 1 and report.cabinet == CAB
    assert report.head_hash == record_hash(chain[-1])
    assert chain[1]["prev"] == record_hash(chain[0])
    report.raise_if_broken()
    assert verify_chain([], PUB).ok


def test_chain_of_1000_records_verifies() -> None:
    t = time.perf_counter()
    chain = make_chain(1000)
    report = verify_chain(chain, PUB)
    assert report.ok, report.problems[:3]
    assert (report.verified, report.last_seq, report.segments) == (1000, 1000, 1)
    assert time.perf_counter() - t < 5


def _tamper(field: str, value: Any) -> Any:
    def apply(chain: list[dict[str, Any]]) -> None:
        chain[2] = {**chain[2], field: value(chain) if callable(value) else value}

    return apply


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_tamper("body", lambda c: {**c[2]["body"], "total_fen": 1}), {"bad_signature"}),
        (_tamper("body", lambda c: {**c[2]["body"], "extra": True}), {"bad_signature"}),
        (
            _tamper("kind", lambda c: "event" if c[2]["kind"] == "sale" else "sale"),
            {"bad_signature"},
        ),
        (_tamper("at", "2030-01-01T00:00:00.000Z"), {"bad_signature"}),
        (_tamper("prev", "f" * 64), {"bad_signature"}),
        (_tamper("sig", lambda c: c[1]["sig"]), {"bad_signature"}),
        (_tamper("seq", 30), {"bad_signature", "seq_gap"}),
        (_tamper("v", 2), {"malformed"}),
        (_tamper("sig", lambda c: c[2]["sig"] + "A"), {"malformed"}),
        (_tamper("prev", "F" * 64), {"malformed"}),
        (_tamper("extra", 1), {"malformed"}),
        (_tamper("cabinet", "cab-evil"), {"wrong_cabinet", "seq_gap"}),
    ],
)
def test_tampering_any_field_is_detected(tamper: Any, expected: set[str]) -> None:
    chain = make_chain(5)
    tamper(chain)
    report = verify_chain(chain, PUB, cabinet_id=CAB)
    assert not report.ok
    assert report.reasons() == expected
    with pytest.raises(ChainBroken):
        report.raise_if_broken()


def test_tampered_record_reported_once_and_rest_still_checked() -> None:
    chain = make_chain(6)
    chain[2] = {**chain[2], "body": {"i": 3, "total_fen": 0}}
    report = verify_chain(chain, PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(3, "bad_signature")]
    assert report.segments == 2 and report.verified == 5 and report.last_seq == 6


def test_reordering_is_detected() -> None:
    chain = make_chain(5)
    chain[2], chain[3] = chain[3], chain[2]
    report = verify_chain(chain, PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(3, "out_of_order")]
    # the links themselves are fine: seq order is what the ledger got wrong
    assert report.segments == 1 and report.head_hash == record_hash(chain[4])


def test_dropping_is_detected() -> None:
    chain = make_chain(8)
    del chain[2]
    del chain[4]  # seq 6
    report = verify_chain(chain, PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(4, "seq_gap"), (7, "seq_gap")]
    assert "seq 3 missing" in report.problems[0].detail
    assert report.segments == 3


def test_dropping_the_tail_is_only_visible_in_the_head() -> None:
    chain = make_chain(5)
    report = verify_chain(chain[:4], PUB)
    assert report.ok and report.last_seq == 4
    assert report.head_hash == chain[4]["prev"] != record_hash(chain[4])


def test_identical_duplicate_is_a_redelivery_not_a_break() -> None:
    chain = make_chain(5)
    report = verify_chain([*chain[:3], chain[2], *chain[3:], chain[1]], PUB)
    assert report.ok
    assert report.duplicates == (3, 2)
    assert report.verified == 5 and report.count == 7


def test_conflicting_duplicate_is_detected() -> None:
    chain = make_chain(5)
    alt = seal(CAB, 3, "sale", T0, chain[2]["prev"], {"i": 3, "total_fen": 0}, KEY)
    report = verify_chain([*chain[:3], alt, *chain[3:]], PUB)
    assert report.reasons() == {"conflicting_duplicate"}
    assert problems_at(report, 3) == {"conflicting_duplicate"}
    # the original is kept on the chain because record 4 links to it
    assert report.head_hash == record_hash(chain[4])


def test_fork_is_a_prev_mismatch() -> None:
    chain = make_chain(5)
    alt3 = seal(CAB, 3, "sale", T0, chain[2]["prev"], {"i": 3, "total_fen": 0}, KEY)
    forked = [chain[0], chain[1], alt3, chain[3], chain[4]]
    report = verify_chain(forked, PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(4, "prev_mismatch")]
    assert "fork" in report.problems[0].detail
    assert report.segments == 2


def test_forging_with_another_key_is_detected() -> None:
    chain = make_chain(5)
    forged = seal(
        CAB, 3, chain[2]["kind"], chain[2]["at"], chain[2]["prev"], chain[2]["body"], OTHER_KEY
    )
    assert {k: v for k, v in forged.items() if k != "sig"} == {
        k: v for k, v in chain[2].items() if k != "sig"
    }
    report = verify_chain([*chain[:2], forged, *chain[3:]], PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(3, "bad_signature")]
    # a whole chain made with another key: every record
    other = verify_chain(make_chain(4, key=OTHER_KEY), PUB)
    assert [p.reason for p in other.problems] == ["bad_signature"] * 4
    assert other.verified == 0 and other.head_hash is None


def test_first_record_must_start_from_zero_hash() -> None:
    with pytest.raises(MalformedMessage):  # seal refuses to make one
        make_chain(1, prev="ab" * 32)
    unsigned = {
        "v": 1,
        "cabinet": CAB,
        "seq": 1,
        "kind": "sale",
        "at": "2026-11-28T10:00:00.000Z",
        "prev": "ab" * 32,
        "body": {},
    }
    rec = {**unsigned, "sig": b64url_encode(KEY.sign(canonical_bytes(unsigned)))}
    verify_record(rec, PUB)
    report = verify_chain([rec], PUB)
    assert [(p.seq, p.reason) for p in report.problems] == [(1, "prev_mismatch")]


def test_chain_may_start_after_seq_1() -> None:
    head = make_chain(10)
    tail = head[6:]
    report = verify_chain(tail, PUB)
    assert report.ok and (report.first_seq, report.last_seq, report.segments) == (7, 10, 1)


def test_wrong_cabinet_and_majority_inference() -> None:
    mine = make_chain(4)
    theirs = make_chain(1, cabinet="cab-t-02")
    report = verify_chain([*mine[:2], theirs[0], *mine[2:]], PUB)
    assert report.cabinet == CAB
    assert [(p.seq, p.reason) for p in report.problems] == [(1, "wrong_cabinet")]
    report = verify_chain(mine, PUB, cabinet_id="cab-t-02")
    assert report.reasons() == {"wrong_cabinet"} and report.verified == 0


def test_malformed_inputs_never_raise() -> None:
    chain = make_chain(3)
    report = verify_chain([None, "x", {"seq": 2}, *chain], PUB)
    assert [p.reason for p in report.problems] == ["malformed"] * 3
    assert report.verified == 3


def test_verify_next() -> None:
    chain = make_chain(4)
    head = (0, ZERO_HASH)
    for rec in chain[:2]:
        h = verify_next(rec, PUB, cabinet_id=CAB, head_seq=head[0], head_hash=head[1])
        head = (rec["seq"], h)
    with pytest.raises(ChainBroken) as gap:
        verify_next(chain[3], PUB, cabinet_id=CAB, head_seq=head[0], head_hash=head[1])
    assert gap.value.problem == "seq_gap" and gap.value.seq == 4
    with pytest.raises(ChainBroken) as stale:
        verify_next(chain[1], PUB, cabinet_id=CAB, head_seq=head[0], head_hash=head[1])
    assert stale.value.problem == "stale"
    with pytest.raises(ChainBroken) as fork:
        verify_next(chain[2], PUB, cabinet_id=CAB, head_seq=2, head_hash="1" * 64)
    assert fork.value.problem == "prev_mismatch"
    with pytest.raises(WrongCabinet):
        verify_next(chain[2], PUB, cabinet_id="cab-x", head_seq=2, head_hash=head[1])
    with pytest.raises(BadSignature):
        verify_next(chain[2], OTHER_KEY.public_key(), cabinet_id=CAB, head_seq=2, head_hash=head[1])


# ------------------------------------------------------------------------ commands

NOW = datetime(2026, 11, 28, 10, 15, 30, tzinfo=UTC)
BACKEND_PUB = BACKEND_KEY.public_key()


def unlock(nonce: str | None = None, expires: datetime | None = None) -> dict[str, Any]:
    return seal_command(
        CAB,
        "unlock",
        {"resident": "r-17", "window_s": 15},
        nonce or new_nonce(),
        expires or NOW + timedelta(seconds=15),
        BACKEND_KEY,
    )


def test_command_round_trip_and_nonce_is_remembered() -> None:
    cmd = unlock()
    seen: set[str] = set()
    verify_command(cmd, BACKEND_PUB, NOW, seen, cabinet_id=CAB)
    assert seen == {cmd["nonce"]}
    assert set(cmd) == {"v", "cabinet", "name", "args", "nonce", "expires", "sig"}
    with pytest.raises(Replayed) as exc:
        verify_command(cmd, BACKEND_PUB, NOW, seen)
    assert exc.value.reason == "replayed"
    # remember=False checks without consuming
    other: set[str] = set()
    verify_command(unlock(), BACKEND_PUB, NOW, other, remember=False)
    assert other == set()


def test_expired_command_is_refused() -> None:
    cmd = unlock(expires=NOW)
    seen: set[str] = set()
    with pytest.raises(Expired) as exc:
        verify_command(cmd, BACKEND_PUB, NOW, seen)
    assert exc.value.reason == "expired" and "expired at" in str(exc.value)
    verify_command(cmd, BACKEND_PUB, NOW - timedelta(milliseconds=1), seen)
    far = unlock(expires=NOW + timedelta(days=3))
    with pytest.raises(Expired, match="more than"):
        verify_command(far, BACKEND_PUB, NOW, set())
    verify_command(far, BACKEND_PUB, NOW, set(), max_ttl=None)


def test_badly_signed_command_is_refused_and_burns_no_nonce() -> None:
    cmd = unlock()
    seen: set[str] = set()
    tampered = {**cmd, "args": {**cmd["args"], "resident": "r-99"}}
    forged = seal_command(CAB, "unlock", cmd["args"], cmd["nonce"], cmd["expires"], KEY)
    for bad in (tampered, forged, {**cmd, "sig": unlock()["sig"]}):
        with pytest.raises(BadSignature) as exc:
            verify_command(bad, BACKEND_PUB, NOW, seen)
        assert exc.value.reason == "bad_signature"
    assert seen == set()
    verify_command(cmd, BACKEND_PUB, NOW, seen)  # the genuine one still works


def test_command_checks_order_and_shape() -> None:
    seen: set[str] = set()
    with pytest.raises(WrongCabinet):
        verify_command(unlock(), BACKEND_PUB, NOW, seen, cabinet_id="cab-other")
    # a forged AND expired command reports the signature first
    old_forged = seal_command(CAB, "unlock", {}, new_nonce(), NOW - timedelta(hours=1), KEY)
    with pytest.raises(BadSignature):
        verify_command(old_forged, BACKEND_PUB, NOW, seen)
    cmd = unlock()
    for bad in (
        {k: v for k, v in cmd.items() if k != "nonce"},
        {**cmd, "name": "Unlock!"},
        {**cmd, "nonce": "short"},
        {**cmd, "args": []},
        {**cmd, "expires": "tomorrow"},
    ):
        with pytest.raises(MalformedMessage):
            verify_command(bad, BACKEND_PUB, NOW, seen)
    with pytest.raises(ValueError, match="naive"):
        verify_command(cmd, BACKEND_PUB, datetime(2026, 11, 28), seen)
    assert seen == set()


def test_ack_round_trip() -> None:
    chain = make_chain(3)
    ack = seal_ack(CAB, 3, record_hash(chain[2]), BACKEND_KEY)
    assert verify_ack(ack, BACKEND_PUB, cabinet_id=CAB) == 3
    with pytest.raises(BadSignature):
        verify_ack({**ack, "upto": 300}, BACKEND_PUB)
    with pytest.raises(BadSignature):
        verify_ack(seal_ack(CAB, 3, ack["head"], KEY), BACKEND_PUB)
    with pytest.raises(WrongCabinet):
        verify_ack(ack, BACKEND_PUB, cabinet_id="cab-x")
    with pytest.raises(MalformedMessage):
        verify_ack({**ack, "upto": 0}, BACKEND_PUB)


def test_message_kinds_do_not_cross() -> None:
    rec = make_chain(1, key=BACKEND_KEY)[0]
    with pytest.raises(MalformedMessage):
        verify_command(rec, BACKEND_PUB, NOW, set())
    with pytest.raises(MalformedMessage):
        verify_ack(unlock(), BACKEND_PUB)


# -------------------------------------------------------------------------- topics


def test_topic_layout() -> None:
    assert topics.sales(CAB) == "freshbox/v1/cab/cab-t-01/sales"
    assert topics.events(CAB) == "freshbox/v1/cab/cab-t-01/events"
    assert topics.telemetry(CAB) == "freshbox/v1/cab/cab-t-01/telemetry"
    assert topics.inventory(CAB) == "freshbox/v1/cab/cab-t-01/inventory"
    assert topics.status(CAB) == "freshbox/v1/cab/cab-t-01/status"
    assert topics.cmd(CAB) == "freshbox/v1/cab/cab-t-01/cmd"
    assert topics.cmd_result(CAB) == "freshbox/v1/cab/cab-t-01/cmd/result"
    assert topics.ack(CAB) == "freshbox/v1/cab/cab-t-01/ack"
    assert topics.supplier_restock("farm_7") == "freshbox/v1/supplier/farm_7/restock"
    assert topics.cabinet_filter("sales") == "freshbox/v1/cab/+/sales"
    assert topics.shared("ingest", topics.cabinet_filter("events")) == (
        "$share/ingest/freshbox/v1/cab/+/events"
    )
    assert topics.parse_topic("freshbox/v1/cab/cab-t-01/cmd/result") == ("cab", CAB, "cmd/result")
    assert topics.parse_topic("freshbox/v1/supplier/farm_7/restock") == (
        "supplier",
        "farm_7",
        "restock",
    )
    specs = topics.CABINET_TOPICS
    assert specs["inventory"].retain and specs["status"].retain
    assert not specs["cmd"].retain and not specs["sales"].retain and not specs["ack"].retain
    assert specs["telemetry"].qos == 0 and specs["sales"].qos == 1
    assert topics.SUPPLIER_RESTOCK.retain


@pytest.mark.parametrize(
    "bad", ["", "a/b", "a+b", "cab#1", "$SYS", "-lead", "with space", "x" * 65, "nul\0", "é", 7]
)
def test_invalid_cabinet_ids(bad: Any) -> None:
    with pytest.raises(InvalidIdentifier):
        topics.validate_cabinet_id(bad)
    with pytest.raises(InvalidIdentifier):
        topics.sales(bad)


def test_parse_topic_refuses_others() -> None:
    for bad in (
        "freshbox/v2/cab/a/sales",
        "freshbox/v1/cab/a",
        "freshbox/v1/cab/a/nope",
        "freshbox/v1/cab/+/sales",
        "freshbox/v1/supplier/a/sales",
        "freshbox/v1/other/a/sales",
    ):
        with pytest.raises(InvalidIdentifier):
            topics.parse_topic(bad)
    assert topics.validate_cabinet_id("x" * 64) == "x" * 64
