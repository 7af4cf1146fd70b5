"""Generic masking of variable parts of log messages (one combined regex pass).

Every mask kind is replaced by the same placeholder ``<*>``: grouping only needs "this is a
variable", and a single placeholder keeps a field that is sometimes a number and sometimes a hex
id in one template. The rules are generic (formats that mean "a value" in any log source), never
tuned per log source; users can add their own with ``extra_patterns``.

Decision on words that contain digits: digits are masked inside a word only where they read as a
counter or an id: after a letter and a ``_``/``-``/``.`` separator (``blk_-123`` -> ``blk_<*>``,
``req-7f3a`` -> ``req-<*>``, ``core.114`` -> ``core.<*>``), as a version (``v1.2.3`` -> ``v<*>``) or as
3+ digits glued to letters (``sda123`` -> ``sda<*>``). Short digits glued to letters (``eth0``,
``sda1``, ``md5``, ``ipv4``, ``log4j``, ``http2``, ``x86_64``) are kept: they name things more often
than they count them, and the miner still generalises them when they vary (``eth0``/``eth1``).
Words without digits (``sshd``) are never masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PLACEHOLDER = "<*>"

# Left/right boundaries: a value starts and ends where a word does not continue.
_L = r"(?<![A-Za-z0-9_])"
_R = r"(?![A-Za-z0-9_])"
_H = "[0-9A-Fa-f]"


def _alts(*alternatives: str) -> str:
    return "|".join(alternatives)


# Alternatives that scan a run of name characters start only where such a run starts
# ("(?<![.-])"), or a long "a.a.a.a..." line would be rescanned from every dot (quadratic).
# Ordered most specific first: the combined alternation takes the first alternative that
# matches at a position, so e.g. a timestamp wins over the numbers inside it. Top-level
# alternatives that must start a word begin with _L (the combined regex relies on it).
MASK_PATTERNS: dict[str, str] = {
    "url": _L + r"[A-Za-z][A-Za-z0-9+.-]{1,15}+://[^\s\"'<>()\[\]{},]+",
    "email": _L
    + r"(?<![.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    "uuid": _L + _H + "{8}-" + _H + "{4}-" + _H + "{4}-" + _H + "{4}-" + _H + "{12}" + _R,
    # ISO-8601 date-times, bare dates, clock times
    "timestamp": _alts(
        _L + r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?" + _R,
        _L + r"\d{4}[/.]\d{1,2}[/.]\d{1,2}" + _R,
        _L + r"\d{1,2}/\d{1,2}/\d{2,4}" + _R,
        _L + r"\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?" + _R,
    ),
    # ctime / syslog dates: "Fri Jun 17 07:07:00 2005", "Jun 17 07:07:00"
    "date_words": (
        _L
        + r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,?\s+)?"
        + r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+"
        + r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:\s+\d{4})?"
        + _R
    ),
    "mac": _L + f"(?:{_H}{{2}}[:-]){{5}}{_H}{{2}}" + _R,
    # PCI bus ids: NVIDIA's "PCI:0000:02:00" (the word PCI is kept), 0000:02:00.0, 02:00.0
    "pci": _alts(
        f"(?<=PCI:){_H}{{4,8}}:{_H}{{2}}:{_H}{{2}}(?:\\.{_H})?" + _R,
        _L + f"(?:{_H}{{4,8}}:)?{_H}{{2}}:{_H}{{2}}\\.[0-7]" + _R,
    ),
    "ipv6": _alts(
        _L + f"(?:{_H}{{1,4}}:){{7}}{_H}{{1,4}}" + _R,
        _L + f"(?:{_H}{{1,4}}:){{1,6}}:(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)?" + _R,
        f"(?<![A-Za-z0-9_:])::(?:{_H}{{1,4}}(?::{_H}{{1,4}})*)" + _R,
    ),
    # a host name with a :port (an IPv4 address with a port included)
    "host_port": _L + r"(?<![.-])[A-Za-z0-9][A-Za-z0-9-]*+(?:\.[A-Za-z0-9-]++)++:\d{1,5}" + _R,
    # DNS names ending in a generic top-level domain, or in a country code after a generic
    # second level (cuhk.edu.hk, example.co.uk), so that Java/Android names
    # (com.android.systemui), dotted settings (mapred.task.id) and files (libcuda.so) stay.
    "hostname": (
        _L
        + r"(?<![.-])(?:[A-Za-z0-9][A-Za-z0-9-]*+\.)++"
        + r"(?:(?:com|net|org|edu|gov|mil|io|info|biz|local|lan|internal|arpa|localdomain)"
        + r"|(?<=\.(?:com|net|org|edu|gov|mil)\.)[a-z]{2}|(?<=\.(?:ac|co|ne|or)\.)[a-z]{2})"
        + r"(?![A-Za-z0-9_.-])"
    ),
    # IPv4 with an optional :port (after host names: 5.36.59.76.dsl.example.net is one name)
    "ipv4": _L + r"\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?" + _R,
    # Absolute paths of two segments or more (a lone "/x" is too often a literal), Windows paths
    "path": _alts(
        r"(?<![/.:0-9_])(?:/[\w.@%+~,-]+){2,}/?",
        _L + r"[A-Za-z]:[\\/][^\s\"']*",
    ),
    # 0x-prefixed hex, or 8+ hex digits mixing digits and letters
    "hex": _alts(
        _L + f"0[xX]{_H}+" + _R,
        _L + f"(?=[a-fA-F]*\\d)(?=\\d*[a-fA-F]){_H}{{8,}}" + _R,
    ),
    # Durations and sizes: a number glued to a unit
    "quantity": (
        _L
        + r"[-+]?\d+(?:\.\d+)?(?:ns|us|µs|ms|s|sec|secs|m|min|mins|h|hrs|d|"
        + r"[kKMGTP]i?B|[kKMGTP]|B|b|bytes|KB/s|MB/s|GB/s|Hz|kHz|MHz|GHz|W|mW|C|%)"
        + _R
    ),
    # Ids with a counter: req-1a2b, blk_-123, core.114, v1.2.3, sda123 (3+ digits)
    "id_suffix": _alts(
        r"(?<=[A-Za-z][_.-])[-+]?\d\w*" + _R,
        r"(?<=[A-Za-z])\d+(?:\.\d+)+" + _R,
        r"(?<=[A-Za-z])\d{3,}" + _R,
    ),
    # ...or a number and a spelled-out unit: "18.4 KB", "255 seconds"
    "spaced_quantity": (
        _L
        + r"[-+]?\d+(?:\.\d+)?\s(?:[kKMGTP]i?B|B|bytes?|ns|us|ms|sec|secs|seconds?|mins?|minutes?|"
        + r"hours?|days?)"
        + _R
    ),
    "number": _L + r"[-+]?\d+(?:[.,_]\d+)*" + _R,
}


# First characters a word-start alternative can begin with (used only to speed matching up).
_START_CLASSES = {"digit": "[0-9]", "hexletter": "[A-Fa-f]", "letter": "[G-Zg-z]", "sign": "[-+:]"}
# ...and of the alternatives that start after a look-behind of their own
_FREE_STARTS = {"path": "/", "id_suffix": "[-+0-9]", "pci": "[0-9A-Fa-f]"}
_KIND_STARTS: dict[str, tuple[str, ...]] = {
    "url": ("hexletter", "letter"),
    "email": ("digit", "hexletter", "letter"),
    "uuid": ("digit", "hexletter"),
    "timestamp": ("digit",),
    "date_words": ("hexletter", "letter"),
    "mac": ("digit", "hexletter"),
    "pci": ("digit", "hexletter"),
    "ipv6": ("digit", "hexletter", "sign"),
    "ipv4": ("digit",),
    "host_port": ("digit", "hexletter", "letter"),
    "hostname": ("digit", "hexletter", "letter"),
    "path": ("hexletter", "letter"),
    "hex": ("digit", "hexletter"),
    "quantity": ("digit", "sign"),
    "id_suffix": (),
    "spaced_quantity": ("digit", "sign"),
    "number": ("digit", "sign"),
}


class Masker:
    """Replaces variable parts of a message with ``<*>`` in one regex pass."""

    def __init__(self, extra_patterns: Iterable[str] = (), kinds: Iterable[str] | None = None):
        self.extra_patterns = tuple(extra_patterns)
        self.kinds = tuple(MASK_PATTERNS) if kinds is None else tuple(kinds)
        unknown = [k for k in self.kinds if k not in MASK_PATTERNS]
        if unknown:
            raise ValueError(f"unknown mask kind(s): {', '.join(unknown)}")
        # Speed: alternatives that must start a word share one look-behind "gate", and behind it
        # a look-ahead on the first character picks the few that can start with it, so the
        # engine tries most alternatives only where they can match.
        by_start: dict[str, list[str]] = {start: [] for start in _START_CLASSES}
        free = []
        for kind in self.kinds:
            # top-level alternatives are joined as "|" + _L (a piece may hold further ones with
            # their own stricter look-behinds: the gate only narrows where they can start)
            for i, alternative in enumerate(MASK_PATTERNS[kind].split("|" + _L)):
                if i == 0 and not alternative.startswith(_L):
                    # the rest start after a look-behind: a look-ahead on their first
                    # character spares trying them at every other position
                    first = _FREE_STARTS.get(kind)
                    free.append(f"(?={first})(?:{alternative})" if first else alternative)
                    continue
                for start in _KIND_STARTS[kind]:
                    by_start[start].append(alternative.removeprefix(_L))
        # alternatives with their own look-behinds go first: they match at positions the gated
        # ones cannot (after "PCI:", inside "blk_-123"), so they never steal a gated match
        parts = [f"(?:{p})" for p in self.extra_patterns] + [f"(?:{p})" for p in free]
        branches = [
            f"(?={_START_CLASSES[start]})(?:" + "|".join(f"(?:{a})" for a in alts) + ")"
            for start, alts in by_start.items()
            if alts
        ]
        if branches:
            parts.append(_L + "(?:" + "|".join(branches) + ")")
        self._regex = re.compile("|".join(parts)) if parts else None

    def mask(self, message: str) -> str:
        if self._regex is None:
            return message
        return self._regex.sub(PLACEHOLDER, message)
