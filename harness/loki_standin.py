"""A small Loki stand-in that speaks Loki's HTTP API on 127.0.0.1, for `make demo` and the end-to-end tests.

Loki itself cannot run here, so this server implements the part of the API rigwatch uses, with
Loki's documented shapes and behaviours:
  POST /loki/api/v1/push                JSON {"streams":[{"stream":{...},"values":[["<ns>","line"],...]}]}
  GET  /loki/api/v1/query_range         LogQL subset: {a="b",c!="d",e=~"re",f!~"re"} |= "x" != "y" |~ "re" !~ "re"
                                        and count_over_time(<that>[5m]); start/end (ns, float seconds
                                        or RFC3339; start inclusive, end exclusive), limit (default
                                        100), direction (default backward), step for metric queries
  GET  /loki/api/v1/labels, /loki/api/v1/label/<name>/values, /loki/api/v1/series (match[]), /ready
A bad query gets 400 with Loki-style plain-text error text. Usage:
    with LokiTestServer() as loki:
        requests.get(loki.url + "/ready")
"""
from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from harness.server_thread import ServerThread

DEFAULT_LIMIT = 100
MAX_ENTRIES_LIMIT = 5000  # Loki's max_entries_limit_per_query default


class QueryError(ValueError):
    """A LogQL or parameter error, answered 400 with this text (as Loki does)."""


# -- LogQL subset -------------------------------------------------------------------------------
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400,
           "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    text = text.strip()
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if not m:
            raise QueryError(f'parse error : not a valid duration string: "{text}"')
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise QueryError(f'parse error : not a valid duration string: "{text}"')
    return total


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str) -> QueryError:
        return QueryError(f"parse error at line 1, col {self.pos + 1}: syntax error: {what}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> None:
        if not self.peek(token):
            found = self.text[self.pos:self.pos + 10] or "end of input"
            raise self.error(f"unexpected {found!r}, expecting {token!r}")
        self.pos += len(token)

    def ident(self) -> str:
        self.skip()
        m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(self.text, self.pos)
        if not m:
            raise self.error(f"unexpected {self.text[self.pos:self.pos + 10] or 'end of input'!r}, "
                             "expecting IDENTIFIER")
        self.pos = m.end()
        return m.group(0)

    def string(self) -> str:
        self.skip()
        if self.peek("`"):
            end = self.text.find("`", self.pos + 1)
            if end < 0:
                raise self.error("unterminated raw string")
            value = self.text[self.pos + 1:end]
            self.pos = end + 1
            return value
        if not self.peek('"'):
            raise self.error(f"unexpected {self.text[self.pos:self.pos + 10] or 'end of input'!r}, "
                             "expecting STRING")
        i = self.pos + 1
        while i < len(self.text):
            if self.text[i] == "\\":
                i += 2
                continue
            if self.text[i] == '"':
                break
            i += 1
        else:
            raise self.error("unterminated string")
        try:
            value = json.loads(self.text[self.pos:i + 1])
        except ValueError as e:
            raise self.error(f"invalid string: {e}") from e
        self.pos = i + 1
        return value

    def at_end(self) -> bool:
        self.skip()
        return self.pos >= len(self.text)


_LEADING_FLAGS = re.compile(r"^\(\?([a-zA-Z]+)\)")


def _compile(pattern: str, anchored: bool, lexer: _Lexer) -> re.Pattern:
    # Loki's label matchers are anchored RE2; `(?i)` at the pattern's start stays a global flag there,
    # which Python only takes at the very start of the whole expression: lift it out of the anchor.
    flags = ""
    m = _LEADING_FLAGS.match(pattern)
    if anchored and m:
        flags, pattern = f"(?{m.group(1)})", pattern[m.end():]
    try:
        return re.compile(f"{flags}^(?:{pattern})$" if anchored else pattern)
    except re.error as e:
        raise lexer.error(f"invalid regex {pattern!r}: {e}") from e


class LogQuery:
    """A stream selector with line filters."""

    def __init__(self, matchers, filters):
        self.matchers = matchers  # (name, op, value, compiled regex or None)
        self.filters = filters    # (op, value, compiled regex or None)

    def matches_stream(self, labels: dict[str, str]) -> bool:
        for name, op, value, regex in self.matchers:
            actual = labels.get(name, "")
            ok = {"=": actual == value, "!=": actual != value}.get(op)
            if ok is None:
                ok = bool(regex.match(actual)) if op == "=~" else not regex.match(actual)
            if not ok:
                return False
        return True

    def matches_line(self, line: str) -> bool:
        for op, value, regex in self.filters:
            if op == "|=" and value not in line:
                return False
            if op == "!=" and value in line:
                return False
            if op == "|~" and not regex.search(line):
                return False
            if op == "!~" and regex.search(line):
                return False
        return True


def _parse_selector(lexer: _Lexer) -> LogQuery:
    lexer.take("{")
    matchers = []
    while not lexer.peek("}"):
        name = lexer.ident()
        lexer.skip()
        for op in ("=~", "!~", "!=", "="):
            if lexer.peek(op):
                lexer.take(op)
                break
        else:
            raise lexer.error(f"unexpected {lexer.text[lexer.pos:lexer.pos + 5]!r}, expecting = or != or =~ or !~")
        value = lexer.string()
        regex = _compile(value, True, lexer) if op in ("=~", "!~") else None
        matchers.append((name, op, value, regex))
        if lexer.peek(","):
            lexer.take(",")
    lexer.take("}")
    if not any((op == "=" and value != "") or (op == "=~" and not regex.match(""))
               for _name, op, value, regex in matchers):
        raise QueryError('parse error : queries require at least one regexp or equality matcher that '
                         'does not have an empty-compatible value. For instance, app=~".*" does not '
                         'meet this requirement, but app=~".+" will')
    filters = []
    while True:
        for op in ("|=", "!=", "|~", "!~"):
            if lexer.peek(op):
                lexer.take(op)
                value = lexer.string()
                filters.append((op, value, _compile(value, False, lexer) if "~" in op else None))
                break
        else:
            break
    return LogQuery(matchers, filters)


def parse_query(text: str):
    """Returns ("log", LogQuery) or ("count_over_time", LogQuery, range_seconds)."""
    lexer = _Lexer(text)
    if lexer.peek("{"):
        query = _parse_selector(lexer)
        if not lexer.at_end():
            raise lexer.error(f"unexpected {lexer.text[lexer.pos:lexer.pos + 10]!r}")
        return ("log", query)
    name = lexer.ident()
    if name != "count_over_time":
        raise QueryError(f"parse error at line 1, col 1: syntax error: unexpected IDENTIFIER {name!r} "
                         "(this test server supports stream selectors and count_over_time)")
    lexer.take("(")
    query = _parse_selector(lexer)
    lexer.take("[")
    end = lexer.text.find("]", lexer.pos)
    if end < 0:
        raise lexer.error("unexpected end of input, expecting ]")
    range_s = parse_duration(lexer.text[lexer.pos:end])
    lexer.pos = end + 1
    lexer.take(")")
    if not lexer.at_end():
        raise lexer.error(f"unexpected {lexer.text[lexer.pos:lexer.pos + 10]!r}")
    return ("count_over_time", query, range_s)


def parse_time_ns(value: str, name: str) -> int:
    """Loki accepts nanosecond integers, float seconds or RFC3339 for start/end."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d+", text):
            number = int(text)
            return number if number > 10**15 else number * 10**9
        if re.fullmatch(r"\d+\.\d*", text):
            return int(float(text) * 1e9)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return int(round(moment.timestamp() * 1e6)) * 1000
    except ValueError:
        raise QueryError(f'invalid parameter "{name}": cannot parse "{value}" to a valid timestamp') from None


# -- storage and HTTP ---------------------------------------------------------------------------
class LokiStore:
    def __init__(self):
        self.lock = threading.Lock()
        self.streams: dict[tuple, list[tuple[int, str]]] = {}

    def push(self, body: dict) -> int:
        if not isinstance(body, dict) or not isinstance(body.get("streams"), list):
            raise QueryError('invalid push request: expected {"streams": [...]}')
        count = 0
        with self.lock:
            for stream in body["streams"]:
                labels = stream.get("stream") if isinstance(stream, dict) else None
                if not isinstance(labels, dict) or not labels:
                    raise QueryError("error at least one label pair is required per stream")
                key = tuple(sorted((str(k), str(v)) for k, v in labels.items() if v != ""))
                entries = self.streams.setdefault(key, [])
                existing = set(entries)
                for value in stream.get("values", []):
                    if not isinstance(value, list) or len(value) < 2 or not str(value[0]).isdigit():
                        raise QueryError(f"invalid entry {value!r}: want [\"<unix epoch in ns>\", \"<line>\"]")
                    entry = (int(value[0]), str(value[1]))
                    if entry not in existing:  # Loki drops exact duplicates (same ts and line)
                        entries.append(entry)
                        existing.add(entry)
                        count += 1
                entries.sort(key=lambda e: e[0])
        return count

    def select(self, query: LogQuery, start_ns: int, end_ns: int):
        with self.lock:
            snapshot = [(dict(key), list(entries)) for key, entries in self.streams.items()]
        for labels, entries in snapshot:
            if query.matches_stream(labels):
                yield labels, [(ts, line) for ts, line in entries
                               if start_ns <= ts < end_ns and query.matches_line(line)]


class _Handler(BaseHTTPRequestHandler):
    server_version = "LokiTestServer/3"
    store: LokiStore

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if content_type == "application/json" else str(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=utf-8" if "text" in content_type else ""))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, text: str):
        self._send(status, text + "\n", "text/plain")

    def do_POST(self):
        path = urlparse(self.path).path
        if path != "/loki/api/v1/push":
            return self._error(404, "404 page not found")
        if "json" not in (self.headers.get("Content-Type") or ""):
            return self._error(415, "unsupported Content-Type: this test server takes application/json")
        length = int(self.headers.get("Content-Length") or 0)
        try:
            self.store.push(json.loads(self.rfile.read(length) or b"null"))
        except (ValueError, QueryError) as e:
            return self._error(400, str(e))
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        url = urlparse(self.path)
        params = {k: v for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        one = {k: v[-1] for k, v in params.items()}
        try:
            if url.path == "/ready":
                return self._send(200, "ready\n", "text/plain")
            if url.path == "/loki/api/v1/query_range":
                return self._send(200, self._query_range(one))
            if url.path == "/loki/api/v1/labels":
                start, end = self._range(one)
                names = {k for labels, _e in self._streams(start, end) for k in labels}
                return self._send(200, {"status": "success", "data": sorted(names)})
            m = re.fullmatch(r"/loki/api/v1/label/([^/]+)/values", url.path)
            if m:
                start, end = self._range(one)
                query = parse_query(one["query"])[1] if one.get("query") else None
                values = {labels[m.group(1)] for labels, _e in self._streams(start, end, query)
                          if m.group(1) in labels}
                return self._send(200, {"status": "success", "data": sorted(values)})
            if url.path == "/loki/api/v1/series":
                start, end = self._range(one)
                matchers = params.get("match[]") or params.get("match")
                if not matchers:
                    raise QueryError("at least one match[] argument is required")
                found = []
                for text in matchers:
                    for labels, _e in self._streams(start, end, parse_query(text)[1]):
                        if labels not in found:
                            found.append(labels)
                return self._send(200, {"status": "success", "data": found})
        except QueryError as e:
            return self._error(400, str(e))
        return self._error(404, "404 page not found")

    def _range(self, one):
        now = time.time_ns()
        end = parse_time_ns(one["end"], "end") if one.get("end") else now
        start = parse_time_ns(one["start"], "start") if one.get("start") else end - 3600 * 10**9
        if end < start:
            raise QueryError("invalid parameter: the query time range is invalid, end must be after start")
        return start, end

    def _streams(self, start, end, query: LogQuery | None = None):
        """Streams with at least one entry in range (label and series calls look at the time range)."""
        query = query or LogQuery([], [])
        return [(labels, entries) for labels, entries in self.store.select(query, start, end) if entries]

    def _query_range(self, one):
        if not one.get("query"):
            raise QueryError("invalid parameter: query is required")
        start, end = self._range(one)
        limit = int(one["limit"]) if one.get("limit", "").isdigit() else DEFAULT_LIMIT
        if limit > MAX_ENTRIES_LIMIT:
            raise QueryError(f"max entries limit per query exceeded, limit > max_entries_limit "
                             f"({limit} > {MAX_ENTRIES_LIMIT})")
        direction = one.get("direction", "backward").lower()
        if direction not in ("forward", "backward"):
            raise QueryError(f'invalid parameter "direction": {direction!r}, want forward or backward')
        parsed = parse_query(one["query"])
        if parsed[0] == "log":
            return self._log_result(parsed[1], start, end, limit, direction)
        return self._matrix_result(parsed[1], parsed[2], start, end, one.get("step"))

    def _log_result(self, query, start, end, limit, direction):
        flat = []
        for labels, entries in self.store.select(query, start, end):
            flat.extend((ts, line, tuple(sorted(labels.items()))) for ts, line in entries)
        flat.sort(key=lambda e: e[0], reverse=(direction == "backward"))
        flat = flat[:limit]
        grouped: dict[tuple, list] = {}
        for ts, line, key in flat:
            grouped.setdefault(key, []).append([str(ts), line])
        result = [{"stream": dict(key), "values": values} for key, values in grouped.items()]
        return {"status": "success", "data": {"resultType": "streams", "result": result,
                                              "stats": {"summary": {"totalEntriesReturned": len(flat)}}}}

    def _matrix_result(self, query, range_s, start, end, step_text):
        if step_text:
            step_s = float(step_text) if re.fullmatch(r"\d+(\.\d+)?", step_text) else parse_duration(step_text)
        else:
            step_s = max(1.0, (end - start) / 1e9 / 250)  # Loki's default resolution
        if step_s <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted. "
                             "Try a positive integer")
        step_ns, range_ns = int(step_s * 1e9), int(range_s * 1e9)
        result = []
        for labels, entries in self.store.select(query, start - range_ns, end + 1):
            stamps = [ts for ts, _line in entries]
            values = []
            t = start
            while t <= end:
                count = sum(1 for ts in stamps if t - range_ns < ts <= t)
                if count:  # Loki leaves out steps with no lines in range
                    values.append([t / 1e9, str(count)])
                t += step_ns
            if values:
                result.append({"metric": labels, "values": values})
        return {"status": "success", "data": {"resultType": "matrix", "result": result, "stats": {}}}


class LokiTestServer(ServerThread):
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.store = LokiStore()
        handler = type("Handler", (_Handler,), {"store": self.store})
        httpd = ThreadingHTTPServer((host, port), handler)
        httpd.daemon_threads = True
        self.url = f"http://{host}:{httpd.server_address[1]}"
        super().__init__(httpd, "loki-test-server")
