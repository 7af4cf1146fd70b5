"""Literal input/expected pairs for the generic masking rules."""

import pytest

from detector.logs.masking import MASK_PATTERNS, Masker


@pytest.fixture(scope="module")
def masker():
    return Masker()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # numbers, signed and decimal, and key=value numeric values
        ("Found child 3746 in slot 7", "Found child <*> in slot <*>"),
        ("offset -42 ratio 0.25", "offset <*> ratio <*>"),
        ("temp=65 count=3 ratio=0.5", "temp=<*> count=<*> ratio=<*>"),
        ("sshd[1234]: accepted", "sshd[<*>]: accepted"),
        # hex
        ("at 0x00e462c0, mask 0x02", "at <*>, mask <*>"),
        ("iar 001064fc dear 0245b64c", "iar <*> dear <*>"),
        ("trace 1a2b3c4d5e6f7a8b", "trace <*>"),
        # UUIDs and request ids
        ("[instance: 70c1714b-c11b-4c88-b300-239afe1f5ff8] spawned", "[instance: <*>] spawned"),
        ("req-7f3a9c21 done", "req-<*> done"),
        ("request_id=abc123def456 ok", "request_id=<*> ok"),
        ("X-Request-ID: 9f86d081884c7d65", "X-Request-ID: <*>"),
        # IPv4 (with port), IPv6 (with port)
        ("from 192.168.1.10:51234 to 10.0.0.1", "from <*> to <*>"),
        ("peer [2001:db8::1]:8080 up", "peer [<*>]:<*> up"),
        ("addr fe80::1ff:fe23:4567:890a and ::1", "addr <*> and <*>"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "v6 <*>"),
        # PCI bus ids, including the NVIDIA Xid form (the "PCI:" word is kept)
        ("device 0000:02:00.0 and 00000000:02:00.0", "device <*> and <*>"),
        ("bridge 02:00.0 found", "bridge <*> found"),
        (
            "NVRM: Xid (PCI:0000:02:00): 79, pid=1234, GPU has fallen off the bus.",
            "NVRM: Xid (PCI:<*>): <*>, pid=<*>, GPU has fallen off the bus.",
        ),
        # MAC addresses
        ("mac 00:1a:2b:3c:4d:5e and 00-1A-2B-3C-4D-5E", "mac <*> and <*>"),
        # paths (two segments or more), Windows paths
        ("open /var/log/syslog.1 failed", "open <*> failed"),
        (r"load C:\Windows\System32\x.dll now", "load <*> now"),
        # durations and sizes, glued or with a spelled-out unit
        ("took 12ms and 3.5s", "took <*> and <*>"),
        ("sizes 64KB 1.2GiB 512 MiB 100%", "sizes <*> <*> <*> <*>"),
        ("out of memory (12.5 GiB)", "out of memory (<*>)"),
        ("lease held for 255 seconds", "lease held for <*>"),
        # timestamps and dates
        ("at 2024-01-15T10:23:45.123Z", "at <*>"),
        ("at 2024-01-15 10:23:45,123 and 10:23:45", "at <*> and <*>"),
        ("connection at Fri Jun 17 07:07:00 2005", "connection at <*>"),
        ("since Jan 15 10:23:45 boot", "since <*> boot"),
        ("day 2016/9/28 ok", "day <*> ok"),
        # e-mail, URL, host names and host:port
        ("mail alice@example.com now", "mail <*> now"),
        ("GET https://example.com/a/b?x=1 done", "GET <*> done"),
        ("resolve proxy.cse.cuhk.edu.hk failed", "resolve <*> failed"),
        ("connect ollama.local:11434 ok", "connect <*> ok"),
        ("dns host.docker.internal", "dns <*>"),
        # ids with a counter after a separator, versions, long digit runs
        ("Deleting block blk_-1608999687919862906", "Deleting block blk_<*>"),
        ("generating core.114", "generating core.<*>"),
        ("Block broadcast_9_piece0 stored", "Block broadcast_<*> stored"),
        ("Session: 30546354_3209865774 initialized", "Session: <*> initialized"),
        ("running v1.2.3", "running v<*>"),
        ("disk sda123 gone", "disk sda<*> gone"),
    ],
)
def test_masks(masker, message, expected):
    assert masker.mask(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        # words without digits, and short digits that name things rather than count them
        "sshd session opened for user root",
        "link eth0 up on sda1",
        "md5 ipv4 log4j http2 x86_64",
        # Java/Android names are not host names; file names are not host names
        "name=com.android.systemui libcuda.so main.py",
        "and/or TCP/IP",
        "cafe deadbeef",  # hex-looking words without a digit
        "CUDA error: out of memory",
        "",
    ],
)
def test_keeps_constants(masker, message):
    assert masker.mask(message) == message


def test_kinds_can_be_selected_and_extra_patterns_come_first():
    only_numbers = Masker(kinds=["number"])
    assert only_numbers.mask("from 10.0.0.1 took 12ms x 5") == "from <*> took 12ms x <*>"
    custom = Masker(extra_patterns=[r"job-[a-z]+"])
    assert custom.mask("job-alpha took 5") == "<*> took <*>"
    assert Masker(kinds=[]).mask("a 1") == "a 1"


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mask kind.*nope"):
        Masker(kinds=["number", "nope"])


def test_every_kind_masks_on_its_own():
    samples = {
        "url": "https://x.org/a",
        "email": "a@b.io",
        "uuid": "123e4567-e89b-12d3-a456-426614174000",
        "timestamp": "2024-01-15T10:23:45Z",
        "date_words": "Jun 17 07:07:00",
        "mac": "00:1a:2b:3c:4d:5e",
        "pci": "0000:02:00.0",
        "ipv6": "fe80::1",
        "ipv4": "10.0.0.1",
        "host_port": "db.lan:5432",
        "hostname": "proxy.cse.cuhk.edu.hk",
        "path": "/a/b",
        "hex": "0xff",
        "quantity": "12ms",
        "id_suffix": "blk_12",
        "spaced_quantity": "3 GiB",
        "number": "42",
    }
    assert set(samples) == set(MASK_PATTERNS)
    for kind, sample in samples.items():
        masked = Masker(kinds=[kind]).mask(f"x {sample} y")
        assert "<*>" in masked and sample not in masked, kind
