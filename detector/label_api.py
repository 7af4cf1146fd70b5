"""The labels' HTTP API: feedback on incidents and maintenance windows (see detector/labels.py).

    GET    /api/v1/feedback[?detector=&since=&until=]  the verdicts given
    POST   /api/v1/feedback            (token) {"detector", "incident" | "start"+"end" [+ "series"],
                                        "label": "true_positive"|"false_positive", "note"}
    GET    /api/v1/maintenance         the windows in force: the config's and the stored ones
    POST   /api/v1/maintenance         (token) {"start", "end", "detectors"?, "note"?}
    DELETE /api/v1/maintenance/<id>    (token) a stored window (a config window is edited in the file)

A bad body is a 400 naming the field, an unknown detector or incident a 404.
"""
from __future__ import annotations

from typing import Any

from flask import jsonify, request

from detector.config_values import ConfigError
from detector.labels import VERDICTS, Feedback, MaintenanceWindow, maintenance_window, time_range
from detector.timefmt import iso, parse_time

_FEEDBACK_KEYS = {"detector", "incident", "start", "end", "series", "label", "note"}


def feedback_json(f: Feedback) -> dict[str, Any]:
    return {"id": f.id, "detector": f.detector, "label": f.label, "start": iso(f.start), "end": iso(f.end),
            "series": f.series, "incident": f.incident, "note": f.note, "created_at": iso(f.created_at)}


def window_json(w: MaintenanceWindow) -> dict[str, Any]:
    return {"id": w.id, "start": iso(w.start), "end": iso(w.end),
            "detectors": list(w.detectors) if w.detectors is not None else None,
            "note": w.note, "source": w.source}


def register_label_routes(app, service, refused, json_body, error) -> None:
    """The API's pieces: `refused(what)`, its token check (None when allowed); `json_body(keys,
    example, optional=)`, its body parser ((body, None) or (None, the 400)); `error(status, message)`."""

    def unavailable(what: str):
        if service.labels is None:
            return error(503, f"{what} is unavailable: this service has no label store")
        return None

    def mutation(what: str, keys: set[str] | None, example: str):
        """(body, None) for an authorised request with a JSON object body, else (None, the answer)."""
        if (denied := refused(what) or unavailable(what)) is not None:
            return None, denied
        return json_body(keys, example, optional=False)

    @app.get("/api/v1/feedback")
    def feedback_list():
        if (denied := unavailable("feedback")) is not None:
            return denied
        args = request.args
        unknown = set(args) - {"detector", "since", "until"}
        if unknown:
            return error(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        try:
            since = parse_time(args["since"], "since") if "since" in args else 0.0
            until = parse_time(args["until"], "until") if "until" in args else float("inf")
        except ValueError as e:
            return error(400, str(e))
        detector = args.get("detector")
        if detector is not None and detector not in service.detector_names() and \
                detector not in {f.detector for f in service.labels.feedback()}:
            return error(404, f"detector: unknown detector {detector!r}")
        if detector is not None:
            items = service.labels.labels_for(detector, since, until)
        else:
            items = [f for f in service.labels.feedback() if f.end >= since and f.start <= until]
        return jsonify({"feedback": [feedback_json(f) for f in items], "count": len(items)})

    @app.post("/api/v1/feedback")
    def feedback_add():
        body, denied = mutation("feedback", _FEEDBACK_KEYS,
                                '{"detector": "gpu_thermal", "incident": "<id>", "label": "true_positive"}')
        if denied is not None:
            return denied
        detector = body.get("detector")
        if not isinstance(detector, str) or not detector:
            return error(400, "detector: expected a detector name")
        label = body.get("label")
        if label not in VERDICTS:
            return error(400, f"label: must be one of {', '.join(VERDICTS)} (got {label!r})")
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > 1000:
            return error(400, "note: expected a string of at most 1000 characters")
        known = set(service.detector_names()) | {i.detector for i in service.incidents()}
        if detector not in known:
            return error(404, f"detector: unknown detector {detector!r}")
        if "incident" in body:
            if {"start", "end", "series"} & set(body):
                return error(400, "incident: give an incident id or start/end (and series), not both")
            wanted = body["incident"]
            if not isinstance(wanted, str):
                return error(400, "incident: expected an incident id as /api/v1/anomalies reports it")
            inc = next((i for i in service.incidents() if i.id == wanted and i.detector == detector), None)
            if inc is None:
                return error(404, f"incident: no incident {wanted!r} of detector {detector!r} "
                                  "(see GET /api/v1/anomalies)")
            start, end, series = inc.start, inc.end, dict(inc.labels)
        else:
            series = body.get("series")
            if series is not None and not (isinstance(series, dict) and
                                           all(isinstance(v, str) for v in [*series, *series.values()])):
                return error(400, "series: expected label names to values, e.g. {\"gpu\": \"0\"}")
            try:
                start, end = time_range(body, "")
            except ConfigError as e:
                return error(400, str(e))
            wanted = None
        item = service.labels.add_feedback(detector, label, start, end, series=series or None,
                                           incident=wanted, note=note)
        return jsonify(feedback_json(item)), 201

    @app.get("/api/v1/maintenance")
    def maintenance_list():
        stored = service.labels.maintenance() if service.labels is not None else []
        items = [*service.config.maintenance, *stored]
        return jsonify({"maintenance": [window_json(w) for w in items], "count": len(items)})

    @app.post("/api/v1/maintenance")
    def maintenance_add():
        # maintenance_window checks the keys, as it does the config's windows
        body, denied = mutation("maintenance", None, '{"start": "2026-12-02T08:00:00Z", "end": "2026-12-02T10:00:00Z"}')
        if denied is not None:
            return denied
        try:
            window = maintenance_window(body, "", source="api")
        except ConfigError as e:
            return error(400, str(e))
        missing = [d for d in window.detectors or () if d not in service.detector_names()]
        if missing:
            return error(404, f"detectors: unknown detector(s) {', '.join(missing)}")
        return jsonify(window_json(service.labels.add_maintenance(window))), 201

    @app.delete("/api/v1/maintenance/<window_id>")
    def maintenance_delete(window_id: str):
        if (denied := refused("maintenance") or unavailable("maintenance")) is not None:
            return denied
        if any(w.id == window_id for w in service.config.maintenance):
            return error(409, f"maintenance window {window_id!r} comes from the config file: edit it there")
        if not service.labels.delete_maintenance(window_id):
            return error(404, f"maintenance window {window_id!r} not found")
        return jsonify({"deleted": window_id})
