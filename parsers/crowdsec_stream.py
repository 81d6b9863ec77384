"""A LAPI decisions-stream body (``{"deleted": [...], "new": [...]}``) parsed as it arrives.

``GET /v1/decisions/stream?startup=true`` lists every active decision: with the community
blocklist or a subscribed list that is tens of thousands of them, 15-20 MB of JSON. Read whole and
decoded at once, such a body cost ten times its size in Python objects before the first decision
reached the engine; fed here chunk by chunk, memory is bounded by a chunk plus one decision, and
each decision leaves as a ``Decision`` as soon as its closing brace has arrived.

The answer it accepts is exactly what ``parse_decisions`` reads from a stream body decoded whole:
``null``, or an object whose ``new``/``deleted`` members are ``null`` or arrays of decision
objects (other members are checked as JSON and ignored). Anything else, truncated or not, is a
``DecisionFormatError``; so is a body that names ``new`` or ``deleted`` twice (whole-body decoding
would silently keep the last). Decisions are decoded by orjson, each with ``decision_from_obj``:
this module only finds where each one starts and ends, and a quick path decodes a run of them
with one orjson call (a run is only taken when orjson accepts it, and JSON is read left to right,
so a run that parses is made of exactly the objects the body holds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Final, NoReturn

import orjson

from parsers.crowdsec import Decision, DecisionDelta, DecisionFormatError, decision_from_obj

# One decision object (or one ignored member's value). CrowdSec's are ~200 bytes.
MAX_ITEM: Final = 64 * 1024
LISTS: Final = ("new", "deleted")

_WS = re.compile(rb"[ \t\n\r]*")
_OUTSIDE = re.compile(rb'["{}\[\]]')  # what matters outside a string
_INSIDE = re.compile(rb'["\\]')  # ... and inside one
_SCALAR_END = re.compile(rb"[,}\] \t\n\r]")


@dataclass(frozen=True, slots=True)
class DeltaPart(DecisionDelta):
    """One piece of a poll's answer, applied as it arrives.

    A poll is a run of parts from ``first`` to ``last``; applied in order they leave the engine as
    the whole answer as one ``DecisionDelta`` would. A startup poll's decisions replace the state
    only at its ``last`` part: one that breaks off drops nothing and the next poll starts over.
    """

    first: bool = True
    last: bool = True


@dataclass(slots=True)
class Batch:
    """Decisions completed by one ``feed``, in body order within each list."""

    new: list[Decision] = field(default_factory=list)
    deleted: list[Decision] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.deleted)


class _S(Enum):
    START = auto()  # before the body's value
    KEY = auto()  # an object member's key (or `}` right after `{`)
    COLON = auto()
    VALUE = auto()  # a member's value
    SKIP = auto()  # inside an ignored member's value
    NEXT = auto()  # `,` or `}` after a member
    ITEM = auto()  # an array element (or `]` right after `[`)
    OBJECT = auto()  # inside a decision object that the quick paths could not take
    AFTER_ITEM = auto()  # `,` or `]` after an element
    END = auto()  # after the body: only whitespace


class StreamParser:
    """Feed the body's chunks in order, then ``close``; both return the decisions completed.

    Holds at most the unfinished tail of the body: one element (at most ``max_item`` bytes) or
    one key. Every error is a ``DecisionFormatError`` naming the byte offset.
    """

    def __init__(self, *, max_item: int = MAX_ITEM) -> None:
        self.max_item = max_item
        self._buf = b""
        self._base = 0  # body offset of _buf[0], for messages
        self._state = _S.START
        self._list = ""  # "new" or "deleted" inside their array, else ""
        self._key = ""  # the member whose value comes next
        self._first_key = False  # a `}` may close the object here
        self._first_item = False  # a `]` may close the array here
        self._seen: set[str] = set()
        self._top_null = False
        # The element or value being scanned across chunks: where it starts, how far it was
        # scanned, the bracket depth and whether the scan stopped inside a string.
        self._start = 0
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._batch_after = 0  # no quick run before this offset in _buf (the last one failed)

    @property
    def done(self) -> bool:
        return self._state is _S.END

    def feed(self, data: bytes) -> Batch:
        out = Batch()
        if not data:
            return out
        buf = self._buf + data if self._buf else bytes(data)
        pos = self._step(buf, 0, out, final=False)
        # Keep only what is still needed; offsets into it move with the cut.
        keep = min(pos, self._start) if self._state in (_S.OBJECT, _S.SKIP) else pos
        self._buf = buf[keep:]
        self._base += keep
        self._start -= keep
        self._scan -= keep
        self._batch_after = max(0, self._batch_after - keep)
        if len(self._buf) > self.max_item:
            self._fail(0, f"an element or key longer than {self.max_item} bytes")
        return out

    def close(self) -> Batch:
        """The end of the body: returns what was still pending, or raises if it is incomplete."""
        out = Batch()
        pos = self._step(self._buf, 0, out, final=True)
        if self._state is not _S.END:
            self._fail(pos, "the body ends before the decisions do")
        if not self._top_null and not self._seen:
            self._fail(0, "an object without 'new' or 'deleted' is not a stream answer")
        self._buf = b""
        return out

    # -- the state machine --------------------------------------------------------------------
    def _fail(self, pos: int, why: str) -> NoReturn:
        msg = f"decisions stream body, byte {self._base + pos}: {why}"
        raise DecisionFormatError(msg)

    def _step(self, buf: bytes, pos: int, out: Batch, *, final: bool) -> int:
        """Consume ``buf`` from ``pos`` as far as it goes; returns where it stopped."""
        n = len(buf)
        while True:
            state = self._state
            if state is _S.OBJECT:
                pos = self._object(buf, out)
                if self._state is _S.OBJECT:
                    return pos
                continue
            if state is _S.SKIP:
                pos = self._skip(buf, final=final)
                if self._state is _S.SKIP:
                    return pos
                continue
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return pos
            c = buf[pos]
            if state is _S.ITEM:
                if c == 0x5D and self._first_item:  # ]
                    self._list, self._state = "", _S.NEXT
                    pos += 1
                elif c != 0x7B:  # {
                    self._fail(pos, f"an element of '{self._list}' is not a decision object")
                else:
                    pos = self._items(buf, pos, out)
            elif state is _S.AFTER_ITEM:
                if c == 0x2C:  # ,
                    self._first_item, self._state = False, _S.ITEM
                elif c == 0x5D:
                    self._list, self._state = "", _S.NEXT
                else:
                    self._fail(pos, "expected ',' or ']' after a decision")
                pos += 1
            elif state is _S.KEY:
                if c == 0x7D and self._first_key:  # }
                    self._state = _S.END
                    pos += 1
                elif c != 0x22:  # "
                    self._fail(pos, "expected a member name")
                else:
                    end = _string_end(buf, pos + 1)
                    if end < 0:
                        return pos  # the key is not complete yet
                    self._key = self._decode_key(buf, pos, end)
                    self._state = _S.COLON
                    pos = end
            elif state is _S.COLON:
                if c != 0x3A:  # :
                    self._fail(pos, "expected ':'")
                self._state = _S.VALUE
                pos += 1
            elif state is _S.VALUE:
                pos = self._value(buf, pos, c, final=final)
                if self._state is _S.VALUE:
                    return pos  # `null` not complete yet
            elif state is _S.NEXT:
                if c == 0x2C:
                    self._first_key, self._state = False, _S.KEY
                elif c == 0x7D:
                    self._state = _S.END
                else:
                    self._fail(pos, "expected ',' or '}' after a member")
                pos += 1
            elif state is _S.START:
                if c == 0x7B:
                    self._first_key, self._state = True, _S.KEY
                    pos += 1
                elif c == 0x6E:  # n
                    if n - pos < 4:
                        if not final:
                            return pos
                        self._fail(pos, "truncated body")
                    if buf[pos : pos + 4] != b"null":
                        self._fail(pos, "not a decisions stream body")
                    self._top_null, self._state = True, _S.END
                    pos += 4
                else:
                    self._fail(pos, "a stream answer is an object with 'new'/'deleted', or null")
            else:  # END: only whitespace may follow
                self._fail(pos, "data after the decisions")

    def _decode_key(self, buf: bytes, start: int, end: int) -> str:
        try:
            key = orjson.loads(buf[start:end])
        except orjson.JSONDecodeError as exc:
            self._fail(start, f"bad member name: {exc}")
        return str(key)

    def _value(self, buf: bytes, pos: int, c: int, *, final: bool) -> int:
        key = self._key
        if key in LISTS:
            if key in self._seen:
                self._fail(pos, f"'{key}' given twice")
            if c == 0x5B:  # [
                self._seen.add(key)
                self._list, self._first_item, self._state = key, True, _S.ITEM
                return pos + 1
            if c == 0x6E:
                if len(buf) - pos < 4 and not final:
                    return pos
                if buf[pos : pos + 4] == b"null":
                    self._seen.add(key)
                    self._state = _S.NEXT
                    return pos + 4
            self._fail(pos, f"'{key}' is neither a list of decisions nor null")
        self._start = self._scan = pos
        self._depth, self._in_string = 0, False
        self._state = _S.SKIP
        return pos

    def _skip(self, buf: bytes, *, final: bool) -> int:
        """An ignored member's value: find its end, check it is JSON, drop it."""
        start = self._start
        c = buf[start]
        if c in (0x7B, 0x5B, 0x22):  # { [ "
            end = self._scan_value(buf)
        else:  # a number or literal ends at the next delimiter
            m = _SCALAR_END.search(buf, start)
            end = m.start() if m else (len(buf) if final else -1)
        if end < 0:
            return start
        try:
            orjson.loads(buf[start:end])
        except orjson.JSONDecodeError as exc:
            self._fail(start, f"member '{self._key}' is not JSON: {exc}")
        self._state = _S.NEXT
        return end

    def _items(self, buf: bytes, pos: int, out: Batch) -> int:
        """Elements from ``pos`` (a ``{``): a run of them at once when it parses, else one."""
        if pos >= self._batch_after:
            close = buf.find(b"]", pos)
            q = buf.rfind(b"}", pos, close if close >= 0 else len(buf)) + 1
            if q > pos:
                try:
                    run = orjson.loads(b"[" + buf[pos:q] + b"]")
                except orjson.JSONDecodeError:
                    self._batch_after = q  # one by one up to there: no retrying the same run
                else:
                    self._take(run, out, pos)
                    self._state = _S.AFTER_ITEM
                    return q
        end = buf.find(b"}", pos) + 1
        if end > 0:
            try:
                obj = orjson.loads(buf[pos:end])
            except orjson.JSONDecodeError:
                pass  # a brace in a string or a nested object: scan it properly
            else:
                self._take((obj,), out, pos)
                self._state = _S.AFTER_ITEM
                return end
        self._start = self._scan = pos
        self._depth, self._in_string = 0, False
        self._state = _S.OBJECT
        return self._object(buf, out)

    def _object(self, buf: bytes, out: Batch) -> int:
        start = self._start
        end = self._scan_value(buf)
        if end < 0:
            return start
        try:
            obj = orjson.loads(buf[start:end])
        except orjson.JSONDecodeError as exc:
            self._fail(start, f"a decision in '{self._list}' is not JSON: {exc}")
        self._take((obj,), out, start)
        self._state = _S.AFTER_ITEM
        return end

    def _take(self, objs: list[object] | tuple[object, ...], out: Batch, pos: int) -> None:
        dest = out.new if self._list == "new" else out.deleted
        try:
            dest.extend([decision_from_obj(o) for o in objs])
        except DecisionFormatError as exc:
            self._fail(pos, f"in '{self._list}': {exc}")

    def _scan_value(self, buf: bytes) -> int:
        """The end of the bracketed value or string at ``_start``, resuming where the last call
        stopped; -1 while it is incomplete."""
        pos, depth, in_string = self._scan, self._depth, self._in_string
        n = len(buf)
        while pos < n:
            if in_string:
                m = _INSIDE.search(buf, pos)
                if m is None:
                    pos = n
                    break
                pos = m.end()
                if buf[pos - 1] == 0x5C:  # backslash: the next byte is escaped
                    if pos >= n:
                        pos -= 1  # come back to the backslash with more data
                        break
                    pos += 1
                    continue
                in_string = False
                if depth == 0:  # the value was a string
                    return pos
                continue
            m = _OUTSIDE.search(buf, pos)
            if m is None:
                pos = n
                break
            pos = m.end()
            c = buf[pos - 1]
            if c == 0x22:
                in_string = True
            elif c in (0x7B, 0x5B):
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    return pos
        self._scan, self._depth, self._in_string = pos, depth, in_string
        return -1


def _string_end(buf: bytes, pos: int) -> int:
    """Just past the closing quote of the string whose body starts at ``pos``, or -1."""
    n = len(buf)
    while pos < n:
        m = _INSIDE.search(buf, pos)
        if m is None:
            return -1
        pos = m.end()
        if buf[pos - 1] == 0x22:
            return pos
        pos += 1  # skip the escaped byte
    return -1


def parse_stream_body(data: bytes, *, startup: bool = False) -> DecisionDelta:
    """A whole stream body through the incremental parser (tests, small answers)."""
    p = StreamParser(max_item=max(MAX_ITEM, len(data)))
    a = p.feed(data)
    b = p.close()
    return DecisionDelta(tuple(a.new + b.new), tuple(a.deleted + b.deleted), startup)
