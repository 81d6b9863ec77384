"""Every active CrowdSec decision, in columns: under 50 bytes each instead of about 1 KB.

A CrowdSec with the community blocklist or a subscribed list holds tens of thousands of
decisions, nearly all on public addresses the audit only counts. As ``Decision`` objects in a
dict, 100,000 of them cost ~100 MB in a sidecar whose limit is 96 Mi. Here a decision is a row:
its value packed (an IPv4 address in the row's 4 bytes, an IPv6 one in a 16-byte slot of a side
pool); its id and expiry in ``array`` columns; its origin, scenario, scope, type and simulated
flag interned together as one "profile" number; and two open-addressing indexes (by id, by
value) in ``array('i')``. ``decision(row, now)`` gives back
the ``Decision`` as the LAPI would report it at ``now``: every field as stored, and the time left
as its duration (the reported duration itself is not kept: 8 bytes a row, and a decision judged
later is judged with the time it has left, as one arriving then would be).

Values are packed only when packing is lossless: ``inet_pton`` then ``inet_ntop`` must give the
same text back (``2001:DB8::1`` or ``::ffff:0:1.2.3.4`` stay text, in a side dict). This is an
encoding of the text, not a reading of the address: classification stays in ``addresses``.

Columns grow by fixed blocks of ``BLOCK`` rows, never by reallocation: growing arrays left
megabytes of freed-but-resident holes in the heap during a startup sync. Rows keep their number
while stored (callers keep none across calls: ``compact`` renumbers); a removed row goes to a
free list.
"""

from __future__ import annotations

import socket
import struct
import sys
from array import array
from collections.abc import Iterator
from itertools import compress
from operator import mul, not_

from parsers.crowdsec import Decision

SHIFT = 12
BLOCK = 1 << SHIFT  # rows per column block
_MASK = BLOCK - 1
# Value kinds (0 marks a free row). A packed value's key is kind, prefix length, address bytes.
_FREE, _TEXT, _V4, _V4NET, _V6, _V6NET = range(6)
_NETS = (_V4NET, _V6NET)
_SIXES = (_V6, _V6NET)
_HEADS = [[bytes((kind, length)) for length in range(256)] for kind in range(6)]

_V4_HEAD = _HEADS[_V4][0]
_u32 = struct.Struct(">I").unpack_from
_pton = socket.inet_pton
_ntop = socket.inet_ntop
_AF_INET = socket.AF_INET

_EMPTY = -1  # index slot never used
_GONE = -2  # index slot whose entry was removed (probing goes on past it)
_MIN_SLOTS = 8
_ID_MAX = 2**32 - 1  # ids 1.._ID_MAX sit in the column; others (and none) as 0 + _odd_ids
_INF = float("inf")
_MAX = sys.float_info.max

Profile = tuple[str, str, str, str, bool]  # scope, type, origin, scenario, simulated

# Marks, reset for each poll (see ``begin_poll``).
UNSEEN = 0  # not confirmed by this poll
ADDED = 1  # confirmed by this poll, and not in the table before it
KEPT = 2  # confirmed by this poll, and in the table before it


def pack_value(value: str) -> bytes | None:
    """``value`` as kind, prefix length and address bytes (6 or 18 bytes), or None when that
    would not give the same text back."""
    if ":" not in value and "/" not in value:  # an IPv4 address, nearly every value
        try:
            raw = _pton(_AF_INET, value)
        except (OSError, ValueError):
            return None
        return _V4_HEAD + raw if _ntop(_AF_INET, raw) == value else None
    addr, sep, plen = value.partition("/")
    length = 0
    if sep:
        if not (0 < len(plen) <= 3 and plen.isascii() and plen.isdigit()):
            return None
        length = int(plen)
        if length > 255 or str(length) != plen:
            return None
    six = ":" in addr
    family = socket.AF_INET6 if six else socket.AF_INET
    try:
        raw = socket.inet_pton(family, addr)
    except (OSError, ValueError):
        return None
    if socket.inet_ntop(family, raw) != addr:
        return None
    kind = (_V6NET if sep else _V6) if six else (_V4NET if sep else _V4)
    return _HEADS[kind][length] + raw


def unpack_value(packed: bytes) -> str:
    kind = packed[0]
    text = socket.inet_ntop(socket.AF_INET6 if kind in _SIXES else socket.AF_INET, packed[2:])
    return f"{text}/{packed[1]}" if kind in _NETS else text


def _value_key(value: str) -> bytes | str:
    """What the value index compares: the packed slot, or the text when it does not pack."""
    return pack_value(value) or value


class DecisionTable:
    """Rows of decisions, with lookups by identity (``Decision.key``) and by scope/value/type.

    ``cls`` is a small number the caller gives each row (the engine stores its address class)
    and ``expires_at`` a clock time or None. Marks let a poll that arrives in pieces find what
    it did not confirm (``begin_poll``, ``unseen``).
    """

    __slots__ = (
        "_addr",
        "_cls",
        "_end",
        "_exp",
        "_free",
        "_id",
        "_ids",
        "_ids_filled",
        "_kind",
        "_live",
        "_mark",
        "_next",
        "_next_exp",
        "_odd_ids",
        "_plen",
        "_prof",
        "_prof_free",
        "_prof_index",
        "_prof_refs",
        "_profiles",
        "_six",
        "_six_end",
        "_six_free",
        "_text",
        "_vals",
        "_vals_filled",
    )

    def __init__(self) -> None:
        # Column blocks: row r is at [r >> SHIFT][r & _MASK].
        self._kind: list[bytearray] = []  # the value's kind; 0 marks a free row
        self._plen: list[bytearray] = []  # its prefix length
        self._addr: list[array[int]] = []  # "I": the IPv4 address, or the IPv6 pool slot
        self._id: list[array[int]] = []  # "I"
        self._prof: list[array[int]] = []  # "H", "I" once there are more profiles
        self._exp: list[array[float]] = []  # clock time; +inf for never (and for free rows)
        self._cls: list[bytearray] = []
        self._mark: list[bytearray] = []
        self._end = 0  # rows ever handed out (the blocks hold at least this many)
        self._next: dict[int, int] = {}  # row -> next row with the same value (rare)
        self._text: dict[int, str] = {}  # row -> value, for values that do not pack
        self._odd_ids: dict[int, int] = {}  # row -> id, for ids outside 1.._ID_MAX
        self._six: list[bytearray] = []  # the IPv6 pool: 16 bytes a slot, BLOCK slots a block
        self._six_end = 0
        self._six_free = array("i")
        self._free = array("i")
        self._live = 0
        self._next_exp = _INF  # no row expires before this
        self._profiles: list[Profile | None] = []
        self._prof_index: dict[Profile, int] = {}
        self._prof_refs = array("I")
        self._prof_free: list[int] = []
        self._ids = array("i", [_EMPTY]) * _MIN_SLOTS  # id -> row
        self._ids_filled = 0  # entries plus _GONE slots
        # value -> first row of its chain; built on first use: only a deletion that misses by
        # id (CrowdSec 1.4.6, below) or an id-less decision needs it, and a CAPI list has none.
        self._vals: array[int] | None = None
        self._vals_filled = 0

    def __len__(self) -> int:
        return self._live

    # -- reading a row ----------------------------------------------------------------------
    def rows(self) -> Iterator[int]:
        """Live rows, in row order, a block at a time (a list of 100,000 row numbers would cost
        3.6 MB): neither add nor remove rows while iterating."""
        for b, kb in enumerate(self._kind):
            base = b << SHIFT
            yield from compress(range(base, base + BLOCK), kb)

    def value(self, row: int) -> str:
        key = self._slot_key(row)
        return key if isinstance(key, str) else unpack_value(key)

    def ident(self, row: int) -> int | None:
        i = self._id[row >> SHIFT][row & _MASK]
        return i if i else self._odd_ids.get(row)

    def profile(self, row: int) -> Profile:
        p = self._profiles[self._prof[row >> SHIFT][row & _MASK]]
        assert p is not None
        return p

    def cls(self, row: int) -> int:
        return self._cls[row >> SHIFT][row & _MASK]

    def expires_at(self, row: int) -> float | None:
        e = self._exp[row >> SHIFT][row & _MASK]
        return None if e == _INF else e

    def decision(self, row: int, now: float) -> Decision:
        scope, dtype, origin, scenario, simulated = self.profile(row)
        exp = self._exp[row >> SHIFT][row & _MASK]
        return Decision(
            id=self.ident(row),
            origin=origin,
            scenario=scenario,
            scope=scope,
            value=self.value(row),
            type=dtype,
            duration_s=None if exp == _INF else exp - now,
            simulated=simulated,
        )

    def key(self, row: int) -> str:
        """``Decision.key`` of the row."""
        i = self.ident(row)
        if i is not None:
            return f"id:{i}"
        scope, dtype, origin, _, _ = self.profile(row)
        return f"{scope}:{self.value(row)}:{dtype}:{origin}"

    # -- finding rows -----------------------------------------------------------------------
    def find(self, d: Decision) -> int:
        """The row holding ``d.key``, or -1."""
        if d.id is not None:
            return self.find_id(d.id)
        want = (d.scope, d.type, d.origin)
        for row in self._chain(d.value):
            if self.ident(row) is None and self.profile(row)[:3] == want:
                return row
        return -1

    def find_id(self, ident: int) -> int:
        slots = self._ids
        mask = len(slots) - 1
        perturb = hash(ident) & 0xFFFFFFFFFFFFFFFF
        i = perturb & mask
        while True:
            row = slots[i]
            if row == _EMPTY:
                return -1
            if row >= 0 and self.ident(row) == ident:
                return row
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask

    def find_key(self, key: str) -> int:
        """The row whose ``Decision.key`` is ``key``, or -1 (id-less keys are searched)."""
        kind, _, rest = key.partition(":")
        digits = rest.removeprefix("-")
        if kind == "id" and digits.isascii() and digits.isdigit() and len(digits) < 40:
            row = self.find_id(int(rest))
            return row if row >= 0 and self.key(row) == key else -1
        # Only decisions read from files lack an id; their key does not split unambiguously.
        for row in self.rows():
            if self.ident(row) is None and self.key(row) == key:
                return row
        return -1

    def on_value(self, value: str) -> list[int]:
        """Rows whose value is exactly ``value`` (any scope, type, origin): a lookup by
        address, without iterating the table."""
        return list(self._chain(value))

    def range_rows(self) -> list[int]:
        """Rows whose value is a network: what may cover an address. Found by scanning the
        kind column in C (``bytearray.find``), not indexed: range decisions are few, and an
        index would cost every row of a 100,000-decision table."""
        out: list[int] = []
        for b, kinds in enumerate(self._kind):
            base = b << SHIFT
            for kind in _NETS:
                at = kinds.find(kind)
                while at >= 0:
                    out.append(base + at)
                    at = kinds.find(kind, at + 1)
        out.extend(row for row, text in self._text.items() if "/" in text)
        return out

    def like(self, scope: str, value: str, dtype: str) -> list[int]:
        """Rows on exactly this scope, value and type (any id, any origin)."""
        return [r for r in self._chain(value) if self.profile(r)[:2] == (scope, dtype)]

    def _chain(self, value: str) -> Iterator[int]:
        if self._vals is None:
            self._vals = array("i", [_EMPTY]) * _size_for(self._live)
            self._vals_filled = 0
            self._next = {}
            for r in self.rows():
                self._link_value(self._slot_key(r), r)
        i = self._value_slot(_value_key(value))
        row = self._vals[i] if i >= 0 else -1
        nxt = self._next
        while row >= 0:
            yield row
            row = nxt.get(row, -1)

    def _slot_key(self, row: int) -> bytes | str:
        """What ``pack_value`` made of the row's value, or its text."""
        b, i = row >> SHIFT, row & _MASK
        kind = self._kind[b][i]
        if kind == _TEXT:
            return self._text[row]
        head = _HEADS[kind][self._plen[b][i]]
        a = self._addr[b][i]
        if kind in _SIXES:
            o = (a & _MASK) << 4
            return head + bytes(self._six[a >> SHIFT][o : o + 16])
        return head + a.to_bytes(4, "big")

    def _value_slot(self, key: bytes | str) -> int:
        """The index slot holding ``key``'s chain, or -1."""
        slots = self._vals
        assert slots is not None
        mask = len(slots) - 1
        perturb = hash(key) & 0xFFFFFFFFFFFFFFFF
        i = perturb & mask
        while True:
            row = slots[i]
            if row == _EMPTY:
                return -1
            if row >= 0 and self._slot_key(row) == key:
                return i
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask

    # -- changing rows ----------------------------------------------------------------------
    def add(self, d: Decision, cls: int, expires_at: float | None) -> int:
        """Store ``d`` in a new row (the caller checked that ``d.key`` has none) and mark it.

        Once per decision of a startup sync: a known profile is counted here, not in
        ``_intern``."""
        value = d.value
        packed = pack_value(value)
        p = (d.scope, d.type, d.origin, d.scenario, d.simulated)
        prof = self._prof_index.get(p)
        if prof is None:
            prof = self._intern(p)
        else:
            self._prof_refs[prof] += 1
        exp = _INF if expires_at is None else expires_at
        free = self._free
        if free:
            row = free.pop()
        else:
            row = self._end
            self._end = row + 1
            if not row & _MASK:
                self._new_block()
        b, i = row >> SHIFT, row & _MASK
        if packed is None:
            self._kind[b][i] = _TEXT
            self._text[row] = value
        elif packed[0] == _V4:
            self._kind[b][i] = _V4
            self._plen[b][i] = 0
            self._addr[b][i] = _u32(packed, 2)[0]
        else:
            kind = self._kind[b][i] = packed[0]
            self._plen[b][i] = packed[1]
            if kind in _SIXES:
                self._addr[b][i] = slot = self._six_slot()
                o = (slot & _MASK) << 4
                self._six[slot >> SHIFT][o : o + 16] = packed[2:]
            else:
                self._addr[b][i] = int.from_bytes(packed[2:], "big")
        self._prof[b][i] = prof
        self._exp[b][i] = exp
        self._cls[b][i] = cls
        self._mark[b][i] = ADDED
        ident = d.id
        if ident is not None:
            if 0 < ident <= _ID_MAX:
                self._id[b][i] = ident
            else:
                self._odd_ids[row] = ident
            slots = self._ids  # _index_id's common case: a free slot at once, no growing
            at = (hash(ident) & 0xFFFFFFFFFFFFFFFF) & (len(slots) - 1)
            if slots[at] == _EMPTY and (self._ids_filled + 1) * 5 <= len(slots) * 4:
                slots[at] = row
                self._ids_filled += 1
            else:
                self._index_id(ident, row)
        if self._vals is not None:
            self._link_value(value if packed is None else packed, row)
        self._next_exp = min(self._next_exp, exp)
        self._live += 1
        return row

    def _six_slot(self) -> int:
        if self._six_free:
            return self._six_free.pop()
        slot = self._six_end
        self._six_end += 1
        if not slot & _MASK:
            self._six.append(bytearray(16 * BLOCK))
        return slot

    def _new_block(self) -> None:
        self._kind.append(bytearray(BLOCK))
        self._plen.append(bytearray(BLOCK))
        self._addr.append(array("I", bytes(4 * BLOCK)))
        self._id.append(array("I", bytes(4 * BLOCK)))
        code = self._prof[0].typecode if self._prof else "H"
        self._prof.append(array(code, bytes(array(code).itemsize * BLOCK)))
        self._exp.append(array("d", [_INF]) * BLOCK)
        self._cls.append(bytearray(BLOCK))
        self._mark.append(bytearray(BLOCK))

    def same(self, row: int, d: Decision) -> bool:
        """``d`` differs from the row at most in its duration (the usual resync)."""
        return (
            self.profile(row) == (d.scope, d.type, d.origin, d.scenario, d.simulated)
            and self.ident(row) == d.id
            and self._slot_key(row) == _value_key(d.value)
        )

    def set_expiry(self, row: int, expires_at: float | None) -> None:
        e = _INF if expires_at is None else expires_at
        self._exp[row >> SHIFT][row & _MASK] = e
        self._next_exp = min(self._next_exp, e)

    def set_cls(self, row: int, cls: int) -> None:
        self._cls[row >> SHIFT][row & _MASK] = cls

    def remove(self, row: int) -> None:
        b, i = row >> SHIFT, row & _MASK
        kind = self._kind[b][i]
        if not kind:
            return
        ident = self.ident(row)
        if ident is not None:
            self._unindex_id(ident)
        if self._vals is not None:
            self._unlink_value(row)
        self._release(self._prof[b][i])
        if kind in _SIXES:
            self._six_free.append(self._addr[b][i])
        self._kind[b][i] = self._plen[b][i] = self._addr[b][i] = 0
        self._text.pop(row, None)
        self._odd_ids.pop(row, None)
        self._id[b][i] = 0
        self._exp[b][i] = _INF
        self._mark[b][i] = UNSEEN
        self._free.append(row)
        self._live -= 1

    # -- polls and expiry -------------------------------------------------------------------
    def begin_poll(self) -> None:
        """Forget the marks of the previous poll."""
        self._mark = [bytearray(BLOCK) for _ in self._kind]

    def mark(self, row: int) -> int:
        return self._mark[row >> SHIFT][row & _MASK]

    def set_mark(self, row: int, mark: int) -> None:
        self._mark[row >> SHIFT][row & _MASK] = mark

    def unseen(self) -> list[int]:
        """Live rows this poll did not confirm."""
        out: list[int] = []
        for b, (kb, mb) in enumerate(zip(self._kind, self._mark, strict=True)):
            base = b << SHIFT
            out += compress(range(base, base + BLOCK), map(mul, kb, map(not_, mb)))
        return out

    def expired(self, now: float) -> list[int]:
        """Live rows whose expiry is at or before ``now``; the caller removes them.

        A scan only once the earliest expiry has passed, at C speed (``compress``/``map``).
        """
        if now < self._next_exp:
            return []
        now = min(now, _MAX)  # "never" (+inf, also every free row) never comes
        rows: list[int] = []
        for b, eb in enumerate(self._exp):
            hit = list(compress(range(BLOCK), map(now.__ge__, eb)))
            for i in hit:
                eb[i] = _INF
            base = b << SHIFT
            rows += [base + i for i in hit]
        self._next_exp = min((min(eb) for eb in self._exp), default=_INF)
        return rows

    def compact(self) -> None:
        """Renumber rows densely when most of the table is free (after a big list shrank)."""
        if len(self._free) <= max(BLOCK, self._live):
            return
        keep = list(self.rows())
        old = [self._slot_key(r) for r in keep]  # values, packed: at most half the table
        ids, prof, exp = self._id, self._prof, self._exp
        cls, mark, odd = self._cls, self._mark, self._odd_ids
        self._kind, self._plen, self._addr, self._id, self._prof, self._exp = [], [], [], [], [], []
        self._cls, self._mark = [], []
        self._text, self._odd_ids, self._next = {}, {}, {}
        self._six, self._six_end, self._six_free = [], 0, array("i")
        self._free = array("i")
        self._end = len(keep)
        for _ in range(0, len(keep), BLOCK):
            self._new_block()
        if prof and prof[0].typecode != self._prof[0].typecode:
            self._prof = [array(prof[0].typecode, blk) for blk in self._prof]
        for n, (r, key) in enumerate(zip(keep, old, strict=True)):
            ob, oi, nb, ni = r >> SHIFT, r & _MASK, n >> SHIFT, n & _MASK
            if isinstance(key, str):
                self._kind[nb][ni] = _TEXT
                self._text[n] = key
            else:
                kind = self._kind[nb][ni] = key[0]
                self._plen[nb][ni] = key[1]
                if kind in _SIXES:
                    self._addr[nb][ni] = slot = self._six_slot()
                    o = (slot & _MASK) << 4
                    self._six[slot >> SHIFT][o : o + 16] = key[2:]
                else:
                    self._addr[nb][ni] = int.from_bytes(key[2:], "big")
            self._id[nb][ni] = ids[ob][oi]
            self._prof[nb][ni] = prof[ob][oi]
            self._exp[nb][ni] = exp[ob][oi]
            self._cls[nb][ni] = cls[ob][oi]
            self._mark[nb][ni] = mark[ob][oi]
            if r in odd:
                self._odd_ids[n] = odd[r]
        self._ids = array("i", [_EMPTY]) * _size_for(self._live)
        self._ids_filled = 0
        self._vals = None  # rebuilt when next needed
        for n in range(self._end):
            ident = self.ident(n)
            if ident is not None:
                self._index_id(ident, n)

    # -- profiles ---------------------------------------------------------------------------
    def _intern(self, p: Profile) -> int:
        ix = self._prof_index.get(p)
        if ix is None:
            if self._prof_free:
                ix = self._prof_free.pop()
                self._profiles[ix] = p
            else:
                ix = len(self._profiles)
                self._profiles.append(p)
                self._prof_refs.append(0)
                if ix > 0xFFFF and self._prof and self._prof[0].typecode == "H":
                    self._prof = [array("I", blk) for blk in self._prof]
            self._prof_index[p] = ix
        self._prof_refs[ix] += 1
        return ix

    def _release(self, ix: int) -> None:
        self._prof_refs[ix] -= 1
        if not self._prof_refs[ix]:
            p = self._profiles[ix]
            if p is not None:
                del self._prof_index[p]
            self._profiles[ix] = None
            self._prof_free.append(ix)

    # -- the id index -----------------------------------------------------------------------
    def _index_id(self, ident: int, row: int) -> None:
        if (self._ids_filled + 1) * 5 > len(self._ids) * 4:
            old = self._ids
            self._ids = new = array("i", [_EMPTY]) * _size_for(self._live + 1)
            mask = len(new) - 1
            column, odd = self._id, self._odd_ids
            filled = 0
            for r in old:  # ``ident`` and ``_place``, inlined: a sync grows it ~15 times
                if r >= 0:
                    perturb = hash(column[r >> SHIFT][r & _MASK] or odd[r]) & 0xFFFFFFFFFFFFFFFF
                    i = perturb & mask
                    while new[i] >= 0:
                        perturb >>= 5
                        i = (i * 5 + perturb + 1) & mask
                    new[i] = r
                    filled += 1
            self._ids_filled = filled
        slots = self._ids  # _place, inlined: this runs once per decision of a startup sync
        mask = len(slots) - 1
        perturb = hash(ident) & 0xFFFFFFFFFFFFFFFF
        i = perturb & mask
        while slots[i] >= 0:
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
        if slots[i] == _EMPTY:
            self._ids_filled += 1
        slots[i] = row

    def _unindex_id(self, ident: int) -> None:
        slots = self._ids
        mask = len(slots) - 1
        perturb = hash(ident) & 0xFFFFFFFFFFFFFFFF
        i = perturb & mask
        while True:
            row = slots[i]
            if row == _EMPTY:
                return
            if row >= 0 and self.ident(row) == ident:
                slots[i] = _GONE
                return
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask

    # -- the value index --------------------------------------------------------------------
    def _link_value(self, key: bytes | str, row: int) -> None:
        slots = self._vals
        assert slots is not None
        mask = len(slots) - 1
        h = hash(key)
        perturb = h & 0xFFFFFFFFFFFFFFFF
        i = perturb & mask
        free = -1  # the first reusable slot on the way, for a value not yet indexed
        while True:
            head = slots[i]
            if head == _EMPTY:
                break
            if head == _GONE:
                if free < 0:
                    free = i
            elif self._slot_key(head) == key:  # another row has this value: join its chain
                self._next[row] = head
                slots[i] = row
                return
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
        if free >= 0:
            slots[free] = row
            return
        if (self._vals_filled + 1) * 5 > len(slots) * 4:
            old = slots
            self._vals = array("i", [_EMPTY]) * _size_for(self._live + 1)
            self._vals_filled = 0
            for head in old:  # chains stay as they are
                if head >= 0:
                    _place(self._vals, hash(self._slot_key(head)), head)
                    self._vals_filled += 1
            _place(self._vals, h, row)
        else:
            slots[i] = row
        self._vals_filled += 1

    def _unlink_value(self, row: int) -> None:
        slots = self._vals
        assert slots is not None
        i = self._value_slot(self._slot_key(row))
        if i < 0:
            return
        nxt = self._next
        head = slots[i]
        after = nxt.pop(row, -1)
        if head == row:
            slots[i] = after if after >= 0 else _GONE
            return
        prev = head
        while nxt.get(prev, -1) != row:
            prev = nxt[prev]
        if after >= 0:
            nxt[prev] = after
        else:
            del nxt[prev]


def _place(slots: array[int], h: int, row: int) -> None:
    """Put ``row`` in the first free slot of ``h``'s probe sequence (CPython's dict probing)
    in a freshly built index."""
    mask = len(slots) - 1
    perturb = h & 0xFFFFFFFFFFFFFFFF
    i = perturb & mask
    while slots[i] >= 0:
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask
    slots[i] = row


def _size_for(n: int) -> int:
    """A power of two with ``n`` entries at most half full."""
    size = _MIN_SLOTS
    while size < 2 * n:
        size *= 2
    return size
