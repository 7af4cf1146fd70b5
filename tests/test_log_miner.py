"""Template miner: literal lines -> expected grouping and template text, ids, persistence."""

import os

import pytest

from detector.logs.miner import MatchResult, MinerConfig, TemplateMiner
from detector.persistence import FilePersistence, MemoryPersistence


def mine(lines, miner=None):
    miner = TemplateMiner() if miner is None else miner
    ids = [miner.add(line).template_id for line in lines]
    return miner, [miner.resolve(i) for i in ids]


def test_numbers_and_addresses_are_variables():
    miner, ids = mine(
        [
            "Failed password for root from 10.0.0.1 port 22 ssh2",
            "Failed password for root from 10.0.0.2 port 2222 ssh2",
            "Accepted publickey for root from 10.0.0.3 port 50022 ssh2",
        ]
    )
    assert ids == ["T1", "T1", "T2"]
    assert miner.templates() == {
        "T1": "Failed password for root from <*> port <*> ssh2",
        "T2": "Accepted publickey for root from <*> port <*> ssh2",
    }


def test_first_result_reports_new_then_known():
    miner = TemplateMiner()
    assert miner.add("GPU 0 temperature 81 C") == MatchResult("T1", "GPU <*> temperature <*> C", True, 1)
    assert miner.add("GPU 1 temperature 79 C") == MatchResult("T1", "GPU <*> temperature <*> C", False, 2)


def test_words_with_digits_generalise_when_they_vary():
    miner, ids = mine(["link up on eth0", "link up on eth1"])
    assert ids == ["T1", "T1"]
    assert miner.templates() == {"T1": "link up on <*>"}


def test_different_plain_words_are_different_events():
    # few distinct values in a word slot: an enumeration of states, not a variable
    miner, ids = mine(
        [
            "VM Started (Lifecycle Event)",
            "VM Paused (Lifecycle Event)",
            "VM Started (Lifecycle Event)",
            "Unit ollama.service entered failed state.",
            "Unit ollama.service entered dead state.",
        ]
    )
    assert ids == ["T1", "T2", "T1", "T3", "T4"]
    assert miner.templates()["T4"] == "Unit ollama.service entered dead state."


def test_word_slot_turns_variable_after_enough_distinct_values():
    lines = [f"Invalid user {user} from 203.0.113.{i}" for i, user in enumerate(["admin", "test", "oracle"])]
    miner, ids = mine(lines)
    assert ids == ["T1", "T2", "T3"]  # three users: still three templates
    result = miner.add("Invalid user git from 203.0.113.9")
    assert (result.template_id, result.template, result.is_new) == ("T1", "Invalid user <*> from <*>", False)
    assert miner.templates() == {"T1": "Invalid user <*> from <*>"}
    assert [miner.resolve(i) for i in ids] == ["T1", "T1", "T1"]
    assert miner.sizes() == {"T1": 4}
    assert miner.add("Invalid user ubuntu from 203.0.113.7").template_id == "T1"


def test_same_constant_words_with_a_different_number_of_values_join():
    miner, ids = mine(
        [
            "proxy.example.com:5070 close, 0 bytes sent, 0 bytes received, lifetime 00:01",
            "proxy.example.com:5070 close, 451 bytes sent, 18846 bytes (18.4 KB) received, lifetime 00:02",
        ]
    )
    assert ids == ["T1", "T1"]


def test_names_with_a_digit_are_names_but_ids_with_counters_are_values():
    miner, ids = mine(
        [
            "host:443 open through proxy p.example.com:5070 HTTPS",
            "host:443 open through proxy p.example.com:5070 SOCKS5",  # another protocol, another event
            "Block broadcast_9_piece0 stored as bytes in memory",
            "Block rdd_2_1 stored as bytes in memory",  # ids with a counter: one event
            "Interface eth0 link is up",
            "Interface eth1 link is up",  # same name, another number: one event
        ]
    )
    assert ids == ["T1", "T2", "T3", "T3", "T4", "T4"]
    assert miner.templates()["T3"] == "Block <*> stored as bytes in memory"
    assert miner.templates()["T4"] == "Interface <*> link is up"


def test_name_slot_with_digits_turns_variable_too():
    lines = [
        f"unable to qualify my own domain name ({h}) -- using short name" for h in ("a1", "b1", "c1", "d1")
    ]
    miner, ids = mine(lines)
    assert ids == ["T1"] * 4
    assert miner.templates() == {"T1": "unable to qualify my own domain name <*> -- using short name"}


def test_outcome_words_never_turn_variable():
    states = ["Started", "Stopped", "Paused", "Resumed", "Failed", "Killed"]
    miner, ids = mine([f"[instance: 42] VM {s} (Lifecycle Event)" for s in states])
    assert ids == [f"T{i}" for i in range(1, 7)]
    assert miner.templates()["T5"] == "[instance: <*>] VM Failed (Lifecycle Event)"


def test_short_messages_need_a_close_match():
    miner, ids = mine(["Ending TrustedInstaller initialization.", "Ending TrustedInstaller finalization."])
    assert ids == ["T1", "T2"]


def test_ids_are_sequential_and_deterministic():
    lines = ["a 1", "b c 2", "a 3", "d e f", "b c 4"]
    _, first = mine(lines)
    _, second = mine(lines)
    assert first == second == ["T1", "T2", "T1", "T3", "T2"]


def test_match_does_not_learn():
    miner, _ = mine(["worker 3 finished in 12ms", "worker 4 finished in 8ms"])
    before = (miner.templates(), miner.sizes())
    assert miner.match("worker 9 finished in 1ms") == MatchResult(
        "T1", "worker <*> finished in <*>", False, 2
    )
    assert miner.match("kernel panic - not syncing") is None
    assert (miner.templates(), miner.sizes()) == before


def test_empty_and_whitespace_messages():
    miner, ids = mine(["", "   ", "x"])
    assert ids == ["T1", "T1", "T2"]
    assert miner.templates()["T1"] == ""


def test_extra_masks_from_config():
    miner, ids = mine(
        ["job alpha done", "job beta done"], TemplateMiner(MinerConfig(extra_masks=(r"alpha|beta",)))
    )
    assert ids == ["T1", "T1"]
    assert miner.templates() == {"T1": "job <*> done"}


LINES = [
    "Started Session 1 of user root.",
    "Started Session 2 of user alice.",
    "NVRM: Xid (PCI:0000:02:00): 79, pid=1234, GPU has fallen off the bus.",
    "Invalid user a from 10.0.0.1",
    "Invalid user b from 10.0.0.2",
    "Invalid user c from 10.0.0.3",
    "Invalid user d from 10.0.0.4",
]


def test_persistence_round_trip_keeps_ids_and_templates(tmp_path):
    path = tmp_path / "state" / "miner.json"
    miner, ids = mine(LINES, TemplateMiner(persistence=FilePersistence(tmp_path), state_name="state/miner.json"))
    miner.save()
    assert path.is_file()

    restored = TemplateMiner(persistence=FilePersistence(tmp_path / "state"), state_name="miner.json")
    assert restored.load() is True
    assert restored.templates() == miner.templates()
    assert restored.sizes() == miner.sizes()
    assert [restored.resolve(i) for i in ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]] == [
        miner.resolve(i) for i in ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]
    ]
    again = [restored.add(line) for line in LINES]
    assert [r.template_id for r in again] == ids
    assert not any(r.is_new for r in again)
    # ids continue after the restart instead of starting over
    assert restored.add("something else entirely happened").template_id == "T8"


def test_load_without_saved_state_is_empty():
    miner = TemplateMiner(persistence=MemoryPersistence())
    assert miner.load() is False
    assert miner.templates() == {}


def test_memory_persistence_round_trip():
    store = MemoryPersistence()
    miner, _ = mine(LINES, TemplateMiner(persistence=store))
    miner.save()
    other = TemplateMiner(persistence=store)
    other.load()
    assert other.templates() == miner.templates()


def test_save_without_persistence_is_an_error():
    with pytest.raises(RuntimeError, match="no persistence"):
        TemplateMiner().save()


def test_corrupt_state_is_a_clear_error():
    store = MemoryPersistence()
    store.save_state("templates.json", b"{not json")
    with pytest.raises(ValueError, match="corrupt miner state"):
        TemplateMiner(persistence=store).load()
    store.save_state("templates.json", b'{"version": 99, "clusters": [], "aliases": {}, "next_id": 1}')
    with pytest.raises(ValueError, match="version"):
        TemplateMiner(persistence=store).load()


def test_crash_mid_save_keeps_last_good_state(tmp_path, monkeypatch):
    path = tmp_path / "miner.json"
    persistence = FilePersistence(tmp_path)
    miner, _ = mine(LINES[:2], TemplateMiner(persistence=persistence, state_name="miner.json"))
    miner.save()
    good = path.read_bytes()
    miner.add("a brand new event")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        miner.save()
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["miner.json"]  # no temp file left behind
    monkeypatch.undo()
    restored = TemplateMiner(persistence=persistence, state_name="miner.json")
    restored.load()
    assert restored.templates() == {
        "T1": "Started Session <*> of user root.",
        "T2": "Started Session <*> of user alice.",
    }


def test_unicode_survives_persistence():
    store = MemoryPersistence()
    miner, _ = mine(["Überhitzung auf GPU 0 – 95 °C", "�� bad bytes 3"], TemplateMiner(persistence=store))
    miner.save()
    other = TemplateMiner(persistence=store)
    other.load()
    assert other.templates() == {"T1": "Überhitzung auf GPU <*> – <*> °C", "T2": "�� bad bytes <*>"}


def test_the_state_name_picks_the_blob():
    store = MemoryPersistence()
    miner, _ = mine(LINES[:2], TemplateMiner(persistence=store, state_name="logs/templates.json"))
    miner.save()
    assert store.list_names("") == ["logs/templates.json"]
    assert TemplateMiner(persistence=store).load() is False  # the default name holds nothing
    assert TemplateMiner(persistence=store, state_name="logs/templates.json").load() is True
