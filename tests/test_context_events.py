"""Context events fold only what lies wholly inside their window, on their scope."""
from detector.context.events import ContextEvent, fold, host_of


def inc(detector, start, end, **labels):
    return {"id": f"{detector}-{start}", "detector": detector, "start": start, "end": end,
            "summary": f"{detector} at {start}", "series_labels": labels}


def test_host_of_instance_forms():
    assert host_of("10.0.0.5:9842") == "10.0.0.5"
    assert host_of("[::1]:9100") == "::1"
    assert host_of("aibox") == "aibox"


def test_fold_takes_what_lies_inside_in_scope_and_keeps_the_rest():
    reboot = ContextEvent("box_restart", 1000, 2000, "box restarted", scope={"host": "10.0.0.5"})
    load = ContextEvent("model_change", 5000, 5300, "ollama loaded x", scope={"uuid": "GPU-1"},
                        detectors=frozenset({"gpu_joint"}))
    items = [inc("gpu_vanished", 1100, 1300, instance="10.0.0.5:9842", uuid="GPU-1"),  # in the reboot
             inc("gpu_vanished", 1100, 2600, instance="10.0.0.5:9842", uuid="GPU-1"),  # runs on past it
             inc("container_restarts", 1100, 1300, instance="10.0.0.6:9842"),  # another box
             inc("gpu_joint", 5060, 5200, instance="10.0.0.5:9842", uuid="GPU-1"),  # in the load
             inc("gpu_joint", 5060, 5200, instance="10.0.0.5:9842", uuid="GPU-0"),  # other card
             inc("gpu_xid", 5060, 5200, instance="10.0.0.5:9842", uuid="GPU-1")]  # not explained by loads
    kept, events = fold(items, [load, reboot])
    assert [i["id"] for i in kept] == ["gpu_vanished-1100", "container_restarts-1100", "gpu_joint-5060",
                                       "gpu_xid-5060"]
    assert kept[2]["series_labels"]["uuid"] == "GPU-0"
    assert [e["kind"] for e in events] == ["box_restart", "model_change"]
    assert [[x["detector"] for x in e["explains"]] for e in events] == [["gpu_vanished"], ["gpu_joint"]]


def test_fold_reads_and_writes_times_through_the_given_converters():
    ev = ContextEvent("box_restart", 60, 120, "r")
    kept, (out,) = fold([inc("a", "t60", "t90")], [ev], to_time=lambda s: float(s[1:]), fmt_time=lambda x: f"@{x:g}")
    assert kept == [] and out["start"] == "@60" and out["explains"][0]["id"] == "a-t60"


def test_a_quiet_event_is_listed_only_when_it_explains_something():
    load = ContextEvent("model_change", 100, 400, "ollama loaded x", quiet=True)
    reboot = ContextEvent("box_restart", 1000, 2000, "box restarted")
    _, listed = fold([], [load, reboot])
    assert [e["kind"] for e in listed] == ["box_restart"]
    _, listed = fold([inc("gpu_joint", 160, 300)], [load, reboot])
    assert [e["kind"] for e in listed] == ["model_change", "box_restart"]
