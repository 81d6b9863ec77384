"""Traefik access log lines (JSON v1/v2/v3 and common format) to access records.

Pure: bytes in, tuples and counters out. Never raises on input; every line either yields one
record or bumps one bounded skip reason.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime
from itertools import accumulate
from typing import Any

import orjson

from parsers.records import AccessRecord, ParseStats, SkipReason, non_blank

MAX_LINE_BYTES = 64 * 1024
# Bytes of whole lines one ``orjson.loads`` reads as an array (~80 Traefik lines): bigger pieces
# keep more dicts alive at once and fall out of the CPU cache (bench/RESULTS.md).
PIECE_BYTES = 32 * 1024
GROUP_LINES = 64  # ``parse``'s lines per array: ~80 lines of a piece, for lines of any size

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# Keys whose presence marks an access line (Traefik's own JSON log has level/msg/time only).
_ACCESS_KEYS = ("ClientAddr", "ClientHost", "RequestMethod")

_CLF = re.compile(
    rb'^(?P<host>[^\[]+?) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]*)\] "(?P<req>[^"]*)" '
    rb"(?P<status>\S+) (?P<size>\S+)"
    rb'(?: (?:"(?P<ref>(?:[^"\\]|\\.)*)"|-)'
    rb' (?:"(?P<ua>(?:[^"\\]|\\.)*)"|-)'
    rb"(?: (?P<count>\S+)"
    rb'(?: (?:"(?P<router>(?:[^"\\]|\\.)*)"|(?P<router_bare>\S+))'
    # One greedy tail with the duration at its end, or anything: a lazy ``.*?`` followed by an
    # optional group backtracked quadratically (13 s on a 60 KB hostile line).
    rb"(?:.* (?P<dur>\d+)ms|.*))?)?)?\s*$"
)
_BOM = b"\xef\xbb\xbf"
_APP_LOG_PREFIXES = (b'time="', b"DEBUG: ", b"INFO: ", b"WARN: ", b"ERROR: ", b"level=")

_TS_CACHE_LIMIT = 8192
_MAX_TS = 253402300799.0  # 9999-12-31T23:59:59Z
# Longest time text worth parsing or caching: RFC3339Nano with an offset is 35 characters, a CLF
# time 26. Longer text is not a time, and 8192 cached 64 KB keys would hold 512 MB.
_MAX_TIME_TEXT = 64
# Most digits in a common-format number (status, size, request count, duration in ms); a longer
# one makes the line a BAD_FIELD skip. ``int()`` of 4,300+ digits raises, and 12 digits of ms
# (31 years) keep the duration in int64 nanoseconds, as wide as the JSON path reads (orjson).
MAX_DIGITS = 12
_NUMBERS = ("status", "size", "count", "dur")


_SECONDS = tuple(f":{sec:02d}" for sec in range(60))
_OFFSETS = tuple(float(sec) for sec in range(60))


class _Seconds(dict[str, float]):
    """StartUTC seconds (its first 19 characters) to epoch seconds, the parser's fast lookup.

    A second not seen yet is worked out in ``__missing__`` instead of raising, so the parser's
    fast path does not leave for the general one; and for the canonical form
    ``YYYY-MM-DDTHH:MM:SS`` all 60 seconds of its minute are stored at once, from one
    ``fromisoformat`` of the minute. At 5 requests/s a fifth of the lines open a new second;
    reading each again, or one Python call each (~1.2 µs), cost quiet logs ~0.2 µs a line.
    """

    __slots__ = ()

    def __missing__(self, key: str) -> float:
        if len(key) != 19:  # not the seconds of a StartUTC: the general path reads the line
            raise KeyError(key)
        sec = key[17:]
        canonical = key[4] == "-" and key[7] == "-" and key[10] == "T" and key[13] == ":"
        # Hour 24 is left to fromisoformat: a newer Python may read 24:00:00 but not 24:00:05.
        plain = key[16] == ":" and key[11:13] < "24" and sec.isascii() and sec.isdigit()
        if not (canonical and plain and sec < "60"):
            return self.put(key, _iso_epoch(key + "+00:00"))
        # fromisoformat reads "MM:SS" as the minute plus SS seconds, and fails for every
        # second of a minute it cannot read: the whole minute is exact from its base.
        minute = key[:16]
        base = _iso_epoch(minute + ":00+00:00")
        if len(self) > _TS_CACHE_LIMIT - 60:
            self.clear()
        keys = map(minute.__add__, _SECONDS)
        if base is not None and base >= 0.0 and base + 59.0 <= _MAX_TS:
            # In C: a minute opens every ~300 lines of a quiet log (5 requests/s).
            self.update(zip(keys, map(base.__add__, _OFFSETS), strict=True))
        else:  # a minute at the ends of the range (or unreadable): each second on its own
            times = [0.0] * 60 if base is None else [base + i for i in range(60)]
            self.update(
                (k, t if 0.0 <= t <= _MAX_TS else 0.0) for k, t in zip(keys, times, strict=True)
            )
        return self[key]

    def put(self, key: str, value: float | None) -> float:
        """Store one key's time (None or out of range: 0.0, no time)."""
        if value is None or not 0.0 <= value <= _MAX_TS:  # year 0001, or 9999 with an offset
            value = 0.0
        if len(self) >= _TS_CACHE_LIMIT:
            self.clear()
        self[key] = value
        return value


def _iso_epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


class _TimeCache:
    """Timestamp strings to epoch seconds, cached per second of log time.

    Parsing a timestamp per line costs more than the rest of a record; one second of an
    Invidious log holds hundreds of lines with the same seconds prefix. StartUTC seconds have
    a cache of their own (``seconds``); ``time``/StartLocal and common-format times share
    ``by_key``, keyed by their whole text.
    """

    __slots__ = ("by_key", "seconds")

    def __init__(self) -> None:
        self.seconds = _Seconds()
        self.by_key: dict[str, float] = {}

    def utc(self, text: str) -> float:
        """StartUTC: RFC3339Nano in UTC; the fraction is dropped."""
        return self.seconds[text[:19]]

    def offset(self, text: str) -> float:
        """``time``/StartLocal: RFC3339 with a zone offset (or Z)."""
        if len(text) > _MAX_TIME_TEXT:
            return 0.0
        hit = self.by_key.get(text)
        if hit is None:
            frac = text.find(".", 19)
            iso = text
            if frac > 0:
                end = frac + 1
                while end < len(text) and text[end].isdigit():
                    end += 1
                iso = text[:frac] + text[end:]
            hit = self._store(text, iso.replace("Z", "+00:00").replace("z", "+00:00"))
        return hit

    def clf(self, text: str) -> float:
        if len(text) > _MAX_TIME_TEXT:
            return 0.0
        hit = self.by_key.get(text)
        if hit is None:
            try:
                value = datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z").timestamp()
            except (ValueError, OverflowError, OSError):
                value = 0.0
            hit = self._put(text, value)
        return hit

    def _store(self, key: str, iso: str) -> float:
        value = _iso_epoch(iso)
        return self._put(key, 0.0 if value is None else value)

    def _put(self, key: str, value: float) -> float:
        if not 0.0 <= value <= _MAX_TS:  # year 0001 or 9999 with an offset: not a real time
            value = 0.0
        if len(self.by_key) >= _TS_CACHE_LIMIT:
            self.by_key.clear()
        self.by_key[key] = value
        return value


def _host_of(addr: str) -> str:
    """``ip:port`` / ``[v6]:port`` to the host part; anything else unchanged."""
    if addr.startswith("["):
        end = addr.find("]")
        return addr[1:end] if end > 0 else addr
    if addr.count(":") == 1:
        return addr.partition(":")[0]
    return addr


def client_of(client_host: str, peer: str) -> str:
    """The address CrowdSec's traefik-logs parser bans: last element of ClientHost, else peer."""
    if client_host:
        if "," in client_host:
            return client_host.rpartition(",")[2].strip()
        return client_host.strip()
    return _host_of(peer) if peer else ""


class TraefikParser:
    """Parses batches of raw lines; keeps only a timestamp cache between batches."""

    __slots__ = ("_times", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._times = _TimeCache()
        self.max_line_bytes = max_line_bytes

    def parse(self, lines: Sequence[bytes], stats: ParseStats) -> list[AccessRecord]:
        """Parse a batch of lines, which carry no trailing newline.

        Groups of up to ``GROUP_LINES`` lines and ``PIECE_BYTES`` are read as arrays like
        ``parse_text``'s pieces (see ``_text``); a line holding a newline itself (a decoded
        envelope may) cannot add an element without a comma, so its group is read line by line.
        """
        stats.lines += len(lines)
        if lines and max(map(len, lines)) > self.max_line_bytes:
            lines = self._drop_long(lines, stats)
        common = stats.common
        out: list[AccessRecord] = []
        loads = _loads
        decode_error = _JSONDecodeError
        # Where each line ends in the joined text: a group ends before it passes PIECE_BYTES
        # (found by bisection, in C), as ``_text``'s pieces do; a longer line is read alone.
        ends = list(accumulate(map(len, lines)))
        size = len(lines)
        start = 0
        while start < size:
            before = ends[start - 1] if start else 0
            stop = bisect_right(ends, before + PIECE_BYTES, start, min(size, start + GROUP_LINES))
            stop = max(stop, start + 1)
            group = lines[start:stop]
            start = stop
            try:
                docs = loads(b"[" + b",\n".join(group) + b"]")
            except decode_error:
                docs = None
            if docs is None or len(docs) != len(group):
                docs = self._docs(group, stats)
            self._take(docs, stats, out)
        stats.json += len(out) - (stats.common - common)
        return out

    def parse_text(self, text: bytes, stats: ParseStats) -> list[AccessRecord]:
        """Parse whole lines as one text, newline-separated (``b""`` is one blank line).

        What replay reads: it need not split its input into lines (``bytes.split`` and
        ``bytes.count`` walk every byte, a fifth of the floor's time; ``rfind`` and
        ``replace`` use ``memchr``).
        """
        common = stats.common
        out: list[AccessRecord] = []
        stats.lines += self._text(text, stats, out)
        stats.json += len(out) - (stats.common - common)
        return out

    def _text(self, text: bytes, stats: ParseStats, out: list[AccessRecord]) -> int:
        """Pieces of up to ``PIECE_BYTES`` of whole lines, each read by one ``orjson.loads``
        as the elements of a JSON array (``[line,\nline,\n...]``): ~0.5 µs a line less than
        a call per line, in C. A piece whose array does not parse, or has not one element per
        line, is read again line by line (``_docs``), so every line gets its own verdict.
        Returns the number of lines.

        A raw newline cannot occur inside a JSON string, so no string spans two lines. Lines
        that are invalid alone yet balance each other (``{"a":[1`` then ``2]}``, next to
        ``{},{}``) could still read as other values than line by line would; only whoever
        writes the log can write such lines (Traefik escapes what clients send), and it could
        as well write valid ones. Pieces stay small: a thousand dicts alive at once made
        ``loads`` slower than a call per line (bench/RESULTS.md).
        """
        loads = _loads
        decode_error = _JSONDecodeError
        size = len(text)
        most = min(PIECE_BYTES, self.max_line_bytes)
        pos = 0
        lines = 0
        while True:
            cut = size if pos + most >= size else text.rfind(b"\n", pos, pos + most)
            if cut < 0:  # the line at pos is longer than a piece
                cut = text.find(b"\n", pos + most)
                if cut < 0:
                    cut = size
                lines += 1
                if cut - pos > self.max_line_bytes:
                    stats.skip(SkipReason.TOO_LONG)
                else:
                    self._take(self._docs((text[pos:cut],), stats), stats, out)
            else:
                piece = text[pos:cut]
                array = b"[" + piece.replace(b"\n", b",\n") + b"]"
                count = len(array) - len(piece) - 1  # one more line than newlines
                lines += count
                try:
                    docs = loads(array)
                except decode_error:
                    docs = None
                if docs is None or len(docs) != count:
                    docs = self._docs(piece.split(b"\n"), stats)
                self._take(docs, stats, out)
            if cut >= size:
                return lines
            pos = cut + 1

    def _docs(self, lines: Sequence[bytes], stats: ParseStats) -> list[Any]:
        """One ``loads`` per line: the JSON values, and in their place the records of
        common-format lines; other lines are counted as skipped and left out.

        Blank lines (empty or whitespace only) cost a raised decode error each; a file of
        newlines took minutes. The first one leaves the loop, and the blank lines left are
        counted and dropped in C (``non_blank``) before it resumes.
        """
        docs: list[Any] = []
        append = docs.append
        loads = _loads
        decode_error = _JSONDecodeError
        todo = iter(lines)
        while True:
            for line in todo:
                try:
                    append(loads(line))
                except decode_error:
                    stripped = line.strip()
                    if not stripped:
                        break
                    rec = self._non_json(stripped, stats)
                    if rec is not None:
                        append(rec)
            else:
                return docs
            kept, blank = non_blank(todo)
            stats.skip(SkipReason.EMPTY, 1 + blank)
            todo = iter(kept)

    def _take(self, docs: list[Any], stats: ParseStats, out: list[AccessRecord]) -> None:
        """Records from decoded lines. The usual Traefik line (every core key present, the
        second of ``StartUTC`` already seen) takes plain subscripts inside a ``try`` that costs
        nothing until a key is missing; anything else takes ``_record``, the general path."""
        append = out.append
        seconds = self._times.seconds
        for d in docs:
            try:
                peer = d["ClientAddr"]
                ch = d["ClientHost"]
                ts = seconds[d["StartUTC"][:19]]
                ep = d["entryPointName"]
                host = d["RequestHost"]
                status = d["DownstreamStatus"]
                dur = d["Duration"]
            except (KeyError, TypeError, IndexError):
                rec = self._record(d, stats)
                if rec is not None:
                    append(rec)
                continue
            router = d.get("RouterName", "-")
            xff = d.get("request_X-Forwarded-For", "")
            rip = d.get("request_X-Real-Ip", "")
            ua = d.get("request_User-Agent", "")
            if (
                type(peer) is not str
                or type(ch) is not str
                or type(ep) is not str
                or type(host) is not str
                or type(router) is not str
                or type(xff) is not str
                or type(rip) is not str
                or type(status) is not int
                or type(ua) is not str
                or type(dur) is not int
            ):
                stats.skip(SkipReason.BAD_FIELD)
                continue
            if ch:
                client = ch.rpartition(",")[2].strip() if "," in ch else ch.strip()
            else:
                client = _host_of(peer)
            append((ts, ep, client, host, router, xff, rip, ua, ch, peer, status, dur))

    def _drop_long(self, lines: Sequence[bytes], stats: ParseStats) -> list[bytes]:
        limit = self.max_line_bytes
        kept = [line for line in lines if len(line) <= limit]
        stats.skip(SkipReason.TOO_LONG, len(lines) - len(kept))
        return kept

    def _record(self, d: object, stats: ParseStats) -> AccessRecord | None:
        """The general path: any JSON value, any subset of keys, wrong types; a tuple is a
        common-format line's record, already read (``_docs``)."""
        if type(d) is tuple:
            return d
        if type(d) is not dict:
            stats.skip(SkipReason.NOT_ACCESS_LOG)
            return None
        get = d.get
        peer = get("ClientAddr", "")
        ch = get("ClientHost", "")
        if not peer and not ch and "RequestMethod" not in d:
            stats.skip(SkipReason.NOT_ACCESS_LOG)
            return None
        start = get("StartUTC")
        if type(start) is str and len(start) >= 19:
            ts = self._times.utc(start)
        else:
            ts = self._fallback_time(d)
        ep = get("entryPointName", "-")
        host = get("RequestHost", "-")
        router = get("RouterName", "-")
        xff = get("request_X-Forwarded-For", "")
        rip = get("request_X-Real-Ip", "")
        status = get("DownstreamStatus", 0)
        ua = get("request_User-Agent", "")
        dur = get("Duration", 0)
        if (
            type(peer) is not str
            or type(ch) is not str
            or type(ep) is not str
            or type(host) is not str
            or type(router) is not str
            or type(xff) is not str
            or type(rip) is not str
            or type(status) is not int
            or type(ua) is not str
            or type(dur) is not int
        ):
            stats.skip(SkipReason.BAD_FIELD)
            return None
        return (ts, ep, client_of(ch, peer), host, router, xff, rip, ua, ch, peer, status, dur)

    def _fallback_time(self, d: dict[str, object]) -> float:
        for key in ("time", "StartLocal"):
            value = d.get(key)
            if type(value) is str and len(value) >= 19:
                return self._times.offset(value)
        return 0.0

    def _non_json(self, stripped: bytes, stats: ParseStats) -> AccessRecord | None:
        """Error path for a non-blank line, stripped: invalid UTF-8, common format, Traefik's
        own log, or garbage."""
        try:
            stripped.decode("utf-8")
        except UnicodeDecodeError:
            stats.skip(SkipReason.INVALID_UTF8)
            return None
        if stripped.startswith(_BOM):
            try:
                return self._record(_loads(stripped[len(_BOM) :]), stats)
            except _JSONDecodeError:
                stripped = stripped[len(_BOM) :]
        if stripped[:1] in (b"{", b"["):
            stats.skip(SkipReason.INVALID_JSON)
            return None
        if stripped.startswith(_APP_LOG_PREFIXES):
            stats.skip(SkipReason.NOT_ACCESS_LOG)
            return None
        m = _CLF.match(stripped)
        if m is None:
            stats.skip(SkipReason.UNRECOGNIZED)
            return None
        rec = self._clf_record(m)
        if rec is None:
            stats.skip(SkipReason.BAD_FIELD)
        else:
            stats.common += 1
        return rec

    def _clf_record(self, m: re.Match[bytes]) -> AccessRecord | None:
        """None when a number (status, size, request count, duration) is longer than any
        Traefik writes (``MAX_DIGITS``), read or not: such a line is not a real access line.

        A status that is not ASCII digits (``-``, ``²``, ``+1``) reads as 0 like an absent one;
        the duration group matches ASCII digits only (a bytes pattern).
        """

        def text(name: str, default: str = "") -> str:
            raw = m.group(name)
            return raw.decode("utf-8") if raw is not None else default

        for name in _NUMBERS:
            raw = m.group(name)
            if raw is not None and len(raw) > MAX_DIGITS and raw.isdigit():
                return None
        status_raw: bytes = m.group("status")
        dur_raw: bytes | None = m.group("dur")
        ch = text("host")
        if ch == "-":
            ch = ""
        router = text("router") or text("router_bare") or "-"
        ua = text("ua")
        return (
            self._times.clf(text("time")),
            "-",
            client_of(ch, ""),
            "-",
            router,
            "",
            "",
            "" if ua == "-" else ua,
            ch,
            "",
            int(status_raw) if status_raw.isdigit() else 0,
            int(dur_raw) * 1_000_000 if dur_raw is not None else 0,
        )
