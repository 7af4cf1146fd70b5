"""The demo's model lifecycle lines, every one of them from the detector's API answers:

    models:   after the first fit, each detector's scoring version, its state and why (GET /api/v1/models;
              detectors with the same text share a line)
    retrain:  one POST /api/v1/retrain (with the API token) of every detector the models API lists
    gated:    per retrained detector, the decision the registry recorded for its new version (outcome,
              reason and the gate's figures, as GET /api/v1/models reports them)
    feedback: the demo's first incident marked (POST /api/v1/feedback) true_positive when it lies in a
              scheduled fault (its time and GPU), false_positive otherwise, and the count stored (GET)

Nothing here waits: `step()` is called from the demo's polling loop and does what is due.
"""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from detector.timefmt import parse_rfc3339

RETRAIN_PATIENCE_S = 90.0  # after this long without a new decision, say which detectors gave none
FAULT_SLACK_S = 60.0  # an incident this close to a scheduled fault's window is about that fault


def _request(url: str, token: str | None = None, body: dict | None = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def _decision_text(decision: dict | None) -> str:
    if not decision:
        return "no decision recorded"
    figures = decision.get("figures") or {}
    text = f"{decision.get('outcome')}: {decision.get('reason')}"
    if figures:
        text += " [" + ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
                                 for k, v in sorted(figures.items())) + "]"
    return text


def model_text(m: dict) -> str:
    """`v1 champion (champion; no gate configured)`: the scoring version, its state, aliases and why."""
    version = f"v{m['version']}" if m.get("version") is not None else "unfitted"
    aliases = ", ".join(m.get("aliases") or []) or "no alias"
    return f"{version} {m.get('state') or 'unrecorded'} ({aliases}; {m.get('reason') or 'no reason recorded'})"


def decision_text(m: dict) -> str:
    """`v2 promoted: no gate configured -> v2 scores (champion v2, challenger none, rollback v1)`."""
    d = m["decision"]
    scoring = f"v{m['version']} scores" if m.get("version") is not None else "nothing scores"
    return (f"v{d['version']} {_decision_text(d)} -> {scoring} (champion {_v(m.get('champion'))}, "
            f"challenger {_v(m.get('challenger'))}, rollback {_v(m.get('rollback_target'))})")


def grouped(prefix: str, items: Sequence[tuple[str, str]]) -> list[str]:
    """One line per distinct text, naming its detectors: fourteen detectors at v1 with the same
    reason are one line, a detector the gate judged differently gets its own."""
    groups: dict[str, list[str]] = {}
    for name, text in items:
        groups.setdefault(text, []).append(name)
    return [f"{prefix}{', '.join(names)} {text}" for text, names in groups.items()]


class Lifecycle:
    """`schedule`: the live sim's incidents (exporter.sim.schedule) and `sim_start`/`speed` to place
    them in wall time, so the first incident's label is the demo's ground truth, not a guess."""

    def __init__(self, detector_url: str, token: str, say: Callable[[str], None], *,
                 schedule: Sequence = (), sim_start: float | None = None, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.url = detector_url
        self.token = token
        self.say = say
        self.schedule = list(schedule)
        self.sim_start = sim_start
        self.speed = speed
        self.clock = clock
        self.pending: dict[str, Any] = {}  # retrained detector -> the decision it had before
        self.retrain_sent: float | None = None
        self.labelled: str | None = None  # the incident given feedback
        # retrained detector -> (its model entry from the API when its decision came, clock then):
        # what the demo's MLflow read-back (scripts/demo_mlflow.py) checks
        self.decided: dict[str, tuple[dict, float]] = {}

    def models(self) -> list[dict]:
        return _request(f"{self.url}/api/v1/models")["models"]

    def show_and_retrain(self) -> None:
        """The models after the first fit, then one retrain of each of them."""
        models = self.models()
        for line in grouped("models:   ", [(m["detector"], model_text(m)) for m in models]):
            self.say(line)
        names = [m["detector"] for m in models]
        answer = _request(f"{self.url}/api/v1/retrain", self.token, {"detectors": names})
        self.pending = {m["detector"]: m.get("decision") for m in models}
        self.say(f"retrain:  POST /api/v1/retrain {answer['status']} for {len(answer['detectors'])} detector(s); "
                 "each new fit goes through the registry's gate")

    def step(self, incidents: Sequence[dict]) -> None:
        """What is due: the first call shows the models and retrains; later ones print the decisions
        as they come and label the first incident once there is one. Each call is tried once: an
        error (raised to the caller) is not retried."""
        if self.retrain_sent is None:
            self.retrain_sent = self.clock()
            self.show_and_retrain()
        if self.pending:
            self._poll_decisions()
        if self.labelled is None and incidents:
            self._label(incidents[0])

    def _poll_decisions(self) -> None:
        decided = []
        for m in self.models():
            name = m["detector"]
            if name not in self.pending or not m.get("decision") or m["decision"] == self.pending[name]:
                continue
            del self.pending[name]
            self.decided[name] = (m, self.clock())
            decided.append((name, decision_text(m)))
        for line in grouped("gated:    ", decided):
            self.say(line)
        if self.pending and self.clock() - self.retrain_sent > RETRAIN_PATIENCE_S:
            self.say(f"retrain:  no new decision after {RETRAIN_PATIENCE_S:.0f} s for "
                     f"{', '.join(sorted(self.pending))} (see detector.log)")
            self.pending = {}

    def truth(self, incident: dict) -> tuple[str, str]:
        """(verdict, why): true_positive when the incident lies in a scheduled fault's window (and on
        its GPU when both name one), false_positive otherwise."""
        start = parse_rfc3339(incident["start"])
        gpu = incident.get("labels", {}).get("gpu")
        for fault in self.schedule:
            if self.sim_start is None:
                break
            begin = self.sim_start + fault.at / self.speed
            end = begin + fault.duration / self.speed
            same_gpu = gpu is None or fault.gpu is None or str(fault.gpu) == gpu
            if begin - FAULT_SLACK_S <= start <= end + FAULT_SLACK_S and same_gpu:
                where = f" on GPU {fault.gpu}" if fault.gpu is not None else ""
                return "true_positive", f"the scheduled {fault.kind}{where}"
        return "false_positive", "no scheduled fault at that time"

    def _label(self, incident: dict) -> None:
        verdict, why = self.truth(incident)
        detector = incident["detector"]
        self.labelled = incident["id"]
        stored = _request(f"{self.url}/api/v1/feedback", self.token,
                          {"detector": detector, "incident": incident["id"], "label": verdict,
                           "note": f"make demo: {why}"})
        listed = _request(f"{self.url}/api/v1/feedback?" + urllib.parse.urlencode({"detector": detector}))
        self.say(f"feedback: {detector} incident {stored['incident']} marked {stored['label']} ({why}); "
                 f"{listed['count']} label(s) stored for {detector}")


def _v(version) -> str:
    return f"v{version}" if version is not None else "none"
