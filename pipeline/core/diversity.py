"""How many different sites, routers and forwarded clients one public address talks for.

A suspected hop (a node's public address that carries everyone's traffic) is told from a heavy
single client by its diversity. Keeping distinct-value sets per public client would cost a set per
client per minute bucket; a 63-bit mask per client costs one int, merges with ``|`` and travels in
a Kafka snapshot as a number. Each distinct value sets one bit chosen by its CRC-32, so a mask's
popcount is a lower bound of the distinct values (exact for a few, saturating at 21), which is all
the thresholds ask ("at least 3 sites", "most of the sites seen"). User-Agents, when the log
keeps them, get a mask of their own per client (``ua_bit``), with the same 21-bit field.

Bit positions must be the same in every process (parallel replay workers, Kafka writers), so they
come from ``zlib.crc32``, not ``hash()`` (salted per process).
"""

from __future__ import annotations

from functools import reduce
from operator import or_
from zlib import crc32

# 21 bits a field, so a whole mask fits a signed 64-bit integer: orjson (the snapshot writer)
# and most JSON readers refuse larger ones.
FIELD_BITS = 21
HOST_SHIFT = 0
ROUTER_SHIFT = FIELD_BITS
XFF_SHIFT = 2 * FIELD_BITS
FIELD_MASK = (1 << FIELD_BITS) - 1
MASK_LIMIT = 1 << (3 * FIELD_BITS)  # every valid mask is below this (snapshot decoder bound)
PUBLIC_CAP = 2048  # public clients tallied per summary (first come): a hop is among the first
_BIT_CACHE_CAP = 1 << 16


class _Bits(dict[str, int]):
    """``bit``'s cache, answering a miss itself, so that ``values_mask`` looks values up in C
    (``map`` over ``__getitem__``): the hop tracker takes a mask of every closed bucket's hosts
    and routers, a close every ~300 lines of quiet traffic."""

    __slots__ = ()

    def __missing__(self, value: str) -> int:
        if len(self) >= _BIT_CACHE_CAP:
            self.clear()
        b = self[value] = 0 if value in ("", "-") else 1 << (crc32(value.encode()) % FIELD_BITS)
        return b


_bits = _Bits()
_bit_of = _bits.__getitem__


def bit(value: str) -> int:
    """The bit (0-20) of a value; "-", "" (absent) set none. Cached: hosts repeat."""
    return _bit_of(value)


UA_BITS: dict[str, int] = {}  # ua_bit's cache (traffic.py reads it inline)
_UA_CACHE_CAP = 4096  # User-Agents run to hundreds of characters: a smaller cache than ``bit``'s


def ua_bit(value: str) -> int:
    """The bit of a User-Agent, for a client's separate User-Agent mask (``Summary.pub_ua``):
    the three fields of ``key_mask`` fill a 63-bit mask already. "" (not logged) sets none."""
    b = UA_BITS.get(value)
    if b is None:
        if len(UA_BITS) >= _UA_CACHE_CAP:
            UA_BITS.clear()
        b = UA_BITS[value] = 0 if value in ("", "-") else 1 << (crc32(value.encode()) % FIELD_BITS)
    return b


def key_mask(host: str, router: str, xff: str) -> int:
    """The mask of one key: its host, its router and the first (client) X-Forwarded-For entry."""
    m = bit(host) | bit(router) << ROUTER_SHIFT
    if xff:
        m |= bit(xff.partition(",")[0].strip()) << XFF_SHIFT
    return m


def field_count(mask: int, shift: int) -> int:
    """At least this many distinct values of the field at ``shift`` (HOST/ROUTER/XFF_SHIFT)."""
    return ((mask >> shift) & FIELD_MASK).bit_count()


def values_mask(values: set[str], shift: int) -> int:
    return reduce(or_, map(_bit_of, values), 0) << shift
