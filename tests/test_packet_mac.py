"""The keyed packet MAC against an independent Python model of it: plain
SipHash-2-4 (checked against the reference vector of the SipHash paper),
four lanes keyed from the token, joined by one more SipHash (siphash.h)."""

import struct

import numpy as np
import pytest

from ringflow import _C

HEADER = _C.PACKET_HEADER_BYTES
MASK = 2**64 - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def _round(v):
    v0, v1, v2, v3 = v
    v0 = (v0 + v1) & MASK; v1 = _rotl(v1, 13) ^ v0; v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & MASK; v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & MASK; v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & MASK; v1 = _rotl(v1, 17) ^ v2; v2 = _rotl(v2, 32)
    return [v0, v1, v2, v3]


def _absorb(v, m):
    v[3] ^= m
    v = _round(_round(v))
    v[0] ^= m
    return v


def _init(k0, k1):
    return [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D,
            k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]


def _finish(v, length, tail=b""):
    v = _absorb(v, int.from_bytes(tail.ljust(8, b"\0"), "little") | ((length & 0xFF) << 56))
    v[2] ^= 0xFF
    for _ in range(4):
        v = _round(v)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def siphash24(k0, k1, data: bytes) -> int:
    v = _init(k0, k1)
    whole = len(data) // 8 * 8
    for i in range(0, whole, 8):
        v = _absorb(v, int.from_bytes(data[i:i + 8], "little"))
    return _finish(v, len(data), data[whole:])


def token_key(token: str):
    t = token.encode()
    return (siphash24(0x72696E67666C6F77, 0x6B65792D30000000, t),
            siphash24(0x72696E67666C6F77, 0x6B65792D31000000, t))


def mac_model(token: str, message: bytes) -> int:
    k0, k1 = token_key(token)
    padded = message + bytes(-len(message) % 8)
    words = [int.from_bytes(padded[i:i + 8], "little") for i in range(0, len(padded), 8)]
    digests = []
    for lane in range(4):
        lk0 = siphash24(k0, k1, b"lane" + bytes([lane, 0]))
        lk1 = siphash24(k0, k1, b"lane" + bytes([lane, 1]))
        mine = words[lane::4]
        v = _init(lk0, lk1)
        for w in mine:
            v = _absorb(v, w)
        digests.append(_finish(v, 8 * len(mine)))
    return siphash24(k0, k1, struct.pack("<5Q", *digests, len(message)))


def test_the_siphash_model_gives_the_papers_reference_output():
    key = bytes(range(16))
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    assert siphash24(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 8, 9, 15, 16352])
def test_keyed_mac_equals_the_model(count, simd_level):
    rng = np.random.default_rng(count)
    fields = {"job": 7, "slot_index": 3, "round": 4, "call": 11, "sender": 1, "workers": 2,
              "offset": 12345, "total": 99999, "exponent": 3, "next_exponent": -2}
    payload = rng.integers(-2**31, 2**31, count).astype("<i4").tobytes()
    for token in ("k", "a longer shared secret"):
        packet = _C.encode_packet(fields, payload, token=token)
        mac = int.from_bytes(packet[HEADER - 8:HEADER], "little")
        unsigned = packet[:HEADER - 8] + bytes(8)
        assert mac == mac_model(token, unsigned + payload), (count, token)
        assert _C.decode_packet(packet, token=token)["authentic"]


def test_every_word_position_and_the_token_count():
    payload = np.arange(40, dtype="<i4").tobytes()
    fields = {"job": 1, "slot_index": 0, "round": 0, "call": 0, "sender": 0, "workers": 2,
              "offset": 0, "total": 40, "exponent": 0, "next_exponent": 0}
    base = _C.encode_packet(fields, payload, token="t")
    mac = base[HEADER - 8:HEADER]
    # Swapping two words of one lane, or of two lanes, changes the MAC.
    for i, j in ((0, 4), (0, 1), (8, 9)):
        w = bytearray(payload)
        w[8 * i:8 * i + 8], w[8 * j:8 * j + 8] = payload[8 * j:8 * j + 8], payload[8 * i:8 * i + 8]
        assert _C.encode_packet(fields, bytes(w), token="t")[HEADER - 8:HEADER] != mac
    assert _C.encode_packet(fields, payload, token="u")[HEADER - 8:HEADER] != mac
    assert not _C.decode_packet(base[:-4] + b"\0\0\0\1", token="t")["authentic"]
