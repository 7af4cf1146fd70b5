"""Line, rate and sequence scoring on small literal inputs; LogDetector facade basics."""
from __future__ import annotations

from collections import Counter

import pytest

from detector.logs.detector import LogDetector, LogDetectorConfig
from detector.logs.journal import LogEntry
from detector.logs.scoring import (
    LineScorer,
    RateModel,
    RepeatTracker,
    SequenceModel,
    level_priority,
    trouble_keywords,
)
from detector.store import pack_state, unpack_state


def test_keywords_are_whole_words_and_levels_map_to_priorities():
    assert trouble_keywords("CUDA error: an illegal memory access; Segmentation fault") == [
        "cuda error", "segmentation fault"]
    assert trouble_keywords("errorless terror; failedover") == []
    assert [level_priority(x) for x in ("FATAL", "severe", "Error", "WARNING", "INFO", None, "odd")] == [
        2, 2, 3, 4, 6, None, None]


def test_line_scorer_novel_error_is_anomalous_novel_info_and_common_error_are_not():
    scorer = LineScorer().fit(["T1"] * 1000 + ["T2"])
    assert scorer.score(None, "disk controller failed", 3) > 1          # novel error + keyword
    assert scorer.score(None, "user alice logged in", 6) < 1            # novel info line
    assert scorer.score("T1", "request failed, retrying", 3) < 1        # seen a thousand times
    assert scorer.score("T2", "request failed", 3) > scorer.score("T1", "request failed", 3)
    assert scorer.score(None, "connection error", None) < 1             # container stderr: no severity


def test_rate_model_burst_and_silence_against_robust_baseline():
    # 2 hours of a stream at ~30 lines per 5 minutes
    events = [(t * 10.0, "chatty") for t in range(720)] + [(t * 600.0, "sparse") for t in range(12)]
    model = RateModel(window_s=300).fit(events, 0.0, 7200.0)
    assert model.score("chatty", 30, 7500)[0] < 1
    burst, kind = model.score("chatty", 150, 7500)
    assert kind == "burst" and burst > 1
    silence, kind = model.score("chatty", 0, 7500)
    assert kind == "silence" and silence > 1
    assert model.score("sparse", 0, 7500) == (0.0, "")                   # not chatty: its silence is normal
    assert model.score("sparse", 8, 7500)[0] < 1                          # too few extra lines to matter
    assert model.score("unknown", 500, 7500) == (0.0, "")


def test_rate_model_burst_must_beat_the_biggest_training_window():
    events = [(t * 60.0, "s") for t in range(120)] + [(3000.0 + k * 0.1, "s") for k in range(40)]
    model = RateModel(window_s=300).fit(events, 0.0, 7200.0)
    peak = 45  # the training's boot-time window: 40 burst lines + 5 routine ones
    assert model.score("s", 2 * peak, 8000)[0] <= 1   # bursty, but within 3x the biggest training window
    assert model.score("s", 3 * peak + 10, 8000)[0] > 1
    assert RateModel(window_s=300, peak_factor=1.0).fit(events, 0.0, 7200.0).score("s", 60, 8000)[0] > 1


def test_repeat_tracker_a_new_error_repeating_is_an_incident_a_known_periodic_one_is_not():
    tracker = RepeatTracker(window_s=900, count=5)
    scores = [tracker.observe("webui", "T9", k * 60.0, expected_in_window=0.0)[0] for k in range(6)]
    assert max(scores[:4]) < 1 < scores[4] < scores[5]
    # training saw this warning about 3 times per 15 minutes: 6 in 15 minutes is still ordinary
    periodic = [tracker.observe("cron", "T2", k * 150.0, expected_in_window=3.0)[0] for k in range(6)]
    assert max(periodic) < 1
    spaced = [tracker.observe("db", "T5", k * 1000.0, expected_in_window=0.0)[0] for k in range(6)]
    assert max(spaced) < 1  # one failure an hour never piles up in the window


def test_sequence_model_state_is_arrays_and_scores_the_same_after_the_store_round_trip():
    # one stream: a start-up chain S -> A, then a request cycle A -> B -> A
    normal = [["S"] + ["A", "B"] * (3 + i % 4) for i in range(60)]
    model = SequenceModel(min_support=4).fit(normal)
    restored = SequenceModel.from_state(unpack_state(pack_state(model.get_state())))
    assert (restored.min_support, restored.vocabulary_) == (4, ["A", "B", "S"])
    probe = [["A", "B"] * 20, ["B", "S"], ["C", "D"], []]
    assert restored.score(probe).tolist() == model.score(probe).tolist()
    assert model.score(probe)[1] > 1
    few = SequenceModel().fit(normal[:5])  # too few windows to learn from: scores 0, state says so
    assert SequenceModel.from_state(unpack_state(pack_state(few.get_state()))).score(probe).tolist() == [0] * 4


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"logs\.windw_s: unknown key"):
        LogDetectorConfig.from_dict({"windw_s": 60})
    with pytest.raises(ValueError, match=r"logs\.window_s: expected a number"):
        LogDetectorConfig.from_dict({"window_s": "5m"})
    with pytest.raises(ValueError, match=r"logs\.patterns\.ssh_per_sorce: unknown key"):
        LogDetectorConfig.from_dict({"patterns": {"ssh_per_sorce": 3}})
    assert LogDetectorConfig.from_dict({"window_s": 60}).window_s == 60


def _entries(start, n, message="cron job ran for user {i}", labels=None, step=30.0):
    return [LogEntry(start + i * step, message.format(i=i), dict(labels or {"job": "systemd-journal", "unit": "cron.service",
                                                                             "priority": "6"})) for i in range(n)]


def test_detector_flags_novel_error_once_and_keeps_state(tmp_path):
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(_entries(0, 200))
    err = LogEntry(6100, "fatal: backup volume /mnt/backup is corrupted",
                   {"job": "systemd-journal", "unit": "backup.service", "priority": "3"})
    results = detector.score(_entries(6000, 3) + [err], 6120)
    flagged = [a for a in results if a.score > 1]
    assert [(a.detector, a.labels["unit"]) for a in flagged] == [("log_template", "backup.service")]
    assert flagged[0].examples == [err.message] and "Novel log template" in flagged[0].summary
    assert detector.novel_templates_total_ == 1
    restored = LogDetector.from_state(detector.get_state())
    assert restored.miner_.templates() == detector.miner_.templates()
    assert restored.line_.counts_ == detector.line_.counts_
    with pytest.raises(ValueError, match="corrupt log detector state"):
        LogDetector.from_state({"version": 1})


def test_detector_state_is_pickle_free_and_scores_the_same_after_the_store_round_trip():
    backup = {"job": "systemd-journal", "unit": "backup.service", "priority": "6"}
    training = _entries(0, 200) + _entries(10, 100, "backup of /srv/share{i} done", backup, step=60.0)
    detector = LogDetector({"window_s": 300}).fit(training)  # the sequence model included
    assert detector.sequence_.fitted_
    restored = LogDetector.from_state(unpack_state(pack_state(detector.get_state())))
    windows = [(_entries(6000, 10), 6300),                                        # cron lines alone
               (_entries(6300, 60, "backup of /srv/share{i} done", backup, step=5.0), 6600),  # a backup burst
               ([LogEntry(6700, "fatal: backup volume /mnt/backup is corrupted", dict(backup, priority="3"))],
                6900)]
    for entries, now in windows:
        expected = [(a.detector, a.labels, a.score, a.summary) for a in detector.score(entries, now)]
        assert [(a.detector, a.labels, a.score, a.summary) for a in restored.score(entries, now)] == expected
        assert "log_sequence" in {e[0] for e in expected}


def test_detector_without_history_still_scores():
    detector = LogDetector().fit([])
    results = detector.score([LogEntry(100.0, "kernel: segfault at 0 ip 0 error 4", {"job": "systemd-journal",
                                                                                  "priority": "3"})], 160.0)
    assert [a.detector for a in results if a.score > 1] == ["log_template"]
    assert LogDetector.from_state(detector.get_state()).miner_.templates() == detector.miner_.templates()


def test_line_scorer_severity_is_news_only_where_the_template_has_not_shown_it():
    # training: T1 an error line (3 times), T2 an info line (3 times)
    scorer = LineScorer().fit(["T1"] * 3 + ["T2"] * 3, [3, 3, 3, 6, 6, 6])
    assert scorer.score("T1", "backup failed: disk busy", 3) < 1      # a known error at its known level
    assert scorer.score("T1", "backup failed: disk busy", 4) < 1      # ... or milder
    assert scorer.score("T1", "backup failed: disk busy", 2) > 1      # more severe than training ever saw
    assert scorer.score("T2", "sync failed", 3) > 1                   # an info template now logged as error
    assert scorer.score("T2", "sync done", 6) < 1
    assert scorer.score(None, "disk controller failed", 3) > 1        # novel error: unchanged
    # rarity still ranks known lines: the rarer known error scores higher
    rare = LineScorer().fit(["T1"] + ["T3"] * 50, [3] + [3] * 50)
    assert 0 < rare.score("T3", "x failed", 3) < rare.score("T1", "x failed", 3) < 1
    # without priorities at fit time (plain text training) severity is always news, as before
    assert LineScorer().fit(["T1"] * 3).score("T1", "backup failed", 3) > 1


def test_line_scorer_remap_follows_merged_templates():
    scorer = LineScorer().fit(["T1", "T2", "T2", "T4"], [6, 3, 4, None])
    scorer.counts_["T5"] += 2  # seen online only
    aliases = {"T2": "T1", "T5": "T4"}
    scorer.remap(lambda t: aliases.get(t, t))
    assert scorer.counts_ == Counter({"T1": 3, "T4": 3})
    assert scorer.trained_counts_ == Counter({"T1": 3, "T4": 1})
    assert scorer.trained_priority_ == {"T1": 3}
    restored = LineScorer().set_state(scorer.get_state())
    assert restored.trained_priority_ == {"T1": 3} and restored.counts_ == scorer.counts_


def test_detector_known_error_at_its_usual_level_is_not_flagged_escalated_one_is():
    backup = {"job": "systemd-journal", "unit": "backup.service", "priority": "3"}
    training = _entries(0, 200) + _entries(15, 8, "backup of /srv/share{i} failed: device busy", backup, step=700.0)
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(training)
    results = detector.score([LogEntry(6100, "backup of /srv/share9 failed: device busy", backup)], 6120)
    assert not [a for a in results if a.score > 1]
    crit = dict(backup, priority="2")
    results = detector.score([LogEntry(6200, "backup of /srv/share9 failed: device busy", crit)], 6220)
    assert [a.detector for a in results if a.score > 1] == ["log_template"]
    restored = LogDetector.from_state(detector.get_state())
    assert restored.line_.trained_priority_ == detector.line_.trained_priority_ != {}


def test_stream_flood_of_ordinary_lines_is_load_a_flood_carrying_news_is_an_incident():
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(_entries(0, 240))  # 10 lines / 5 min
    flood = _entries(7500, 200, step=1.5)
    rates = [a for a in detector.score(flood, 7800) if a.detector == "log_rate"]
    stream = [a for a in rates if a.labels.get("unit") == "cron.service"]
    assert stream and 0.5 < stream[0].score <= 1 and "burst" in stream[0].summary   # shown, not alerted
    assert max(a.score for a in rates) <= 1
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(_entries(0, 240))
    news = LogEntry(7600, "cron: reloading configuration from /etc/cron.d", flood[0].labels)
    results = detector.score(flood + [news], 7800)
    assert [(a.detector, a.labels.get("unit")) for a in results if a.score > 1] == [("log_rate", "cron.service")]


def test_log_spam_of_ordinary_lines_alerts_once_far_beyond_the_busiest_training_window():
    # training: 10 lines per 5 min; the spam bar is max(10 x the busiest window, 300 extra lines)
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(_entries(0, 240))
    below = [a for a in detector.score(_entries(7500, 290, step=300 / 290), 7800)
             if a.labels.get("unit") == "cron.service" and a.detector == "log_rate"]
    assert below and below[0].score <= 1 and "log spam" not in below[0].summary  # 280 extra lines: load
    detector = LogDetector({"window_s": 300, "sequence": False}).fit(_entries(0, 240))
    spam = [a for a in detector.score(_entries(7500, 1200, step=0.25), 7800)
            if a.labels.get("unit") == "cron.service" and a.detector == "log_rate"]
    assert spam and spam[0].score > 1 and "log spam" in spam[0].summary
    # the bar is configurable: a user who wants every 3x flood alerted can have it
    detector = LogDetector({"window_s": 300, "sequence": False, "spam_peak_factor": 3,
                            "spam_min_lines": 0}).fit(_entries(0, 240))
    flood = [a for a in detector.score(_entries(7500, 200, step=1.5), 7800)
             if a.labels.get("unit") == "cron.service" and a.detector == "log_rate"]
    assert flood[0].score > 1


def test_rate_model_spam_bar_needs_both_the_peak_factor_and_the_line_floor():
    events = [(t * 30.0, "s") for t in range(240)]  # 10 per 5 min for 2 h
    model = RateModel(window_s=300).fit(events, 0.0, 7200.0)
    assert model.score("s", 200, 7500)[0] > 1                                     # the ordinary bar
    assert model.score("s", 200, 7500, peak_factor=10, min_lines=300)[0] < 1      # the spam bar
    assert model.score("s", 400, 7500, peak_factor=10, min_lines=300)[0] > 1
    assert model.score("s", 400, 7500, peak_factor=50, min_lines=300)[0] < 1


def test_kernel_lines_naming_the_xid_gpu_join_its_anomaly_instead_of_alerting_on_their_own():
    kernel = {"job": "systemd-journal", "identifier": "kernel", "transport": "kernel", "priority": "4"}
    detector = LogDetector({"window_s": 300, "sequence": False},
                           gpu_by_pci={"0000:02:00.0": "1"}).fit(_entries(0, 200))
    err = dict(kernel, priority="3")
    lines = [LogEntry(6100.000, "NVRM: GPU at PCI:0000:02:00: GPU-b2e71d04-6a9c-5f38-d41e-7c0a93b26f1d", kernel),
             LogEntry(6100.000, "NVRM: Xid (PCI:0000:02:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen "
                                "off the bus.", kernel),
             LogEntry(6100.001, "NVRM: GPU 0000:02:00.0: GPU has fallen off the bus.", err),
             LogEntry(6100.002, "NVRM: GPU 0000:02:00.0: RmInitAdapter failed! (0x26:0xffff:1589)", err),
             # the same kind of line about another device, or too late to be part of it, is its own news
             LogEntry(6100.003, "NVRM: GPU 0000:41:00.0: RmInitAdapter failed! (0x26:0xffff:1589)", err)]
    flagged = [a for a in detector.score(lines, 6120) if a.score > 1]
    assert [(a.detector, a.labels.get("gpu"), a.labels.get("priority")) for a in flagged] == [
        ("log_pattern", "1", None), ("log_template", None, "3")], flagged
    assert flagged[0].examples[1:] == ["NVRM: GPU at PCI:0000:02:00: GPU-b2e71d04-6a9c-5f38-d41e-7c0a93b26f1d",
                                       "NVRM: GPU 0000:02:00.0: GPU has fallen off the bus."]
    assert "0000:41:00" in flagged[1].examples[0]
    later = detector.score([LogEntry(6400, "NVRM: GPU 0000:02:00.0: RmInitAdapter failed! (0x26:0xffff:1589)",
                                     err)], 6420)
    assert [a.detector for a in later if a.score > 1] == ["log_template"]  # 5 min later: not the same fault
