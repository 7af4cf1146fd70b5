"""Flask app factory: /metrics, /healthz, /readyz and the JSON API over a DetectorService.

Handlers only read the service's finished state; scoring happens in scheduler jobs. Every error is
a JSON body {"error": ..., "status": N}. POST /api/v1/retrain (and the models' promote/rollback) needs `Authorization: Bearer <token>`
with the token from RIGWATCH_API_TOKEN or the config's api_token; with none set it answers 503
saying how to set one (there is no default token).
"""
from __future__ import annotations

import hmac
import logging
import math

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from detector.config import ConfigError
from detector.label_api import register_label_routes
from detector.metrics import DetectorCollector
from detector.registry import NoRollbackTarget, RegistryError
from detector.timefmt import iso, parse_time

log = logging.getLogger("rigwatch.detector.api")


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def create_app(service, *, registry: CollectorRegistry | None = None, environ=None) -> Flask:
    import os

    env = os.environ if environ is None else environ
    app = Flask("rigwatch-detector")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DetectorCollector(lambda: service.snapshot, service.extra_families))
    app.config["registry"] = registry

    def error(status: int, message: str, **extra):
        body = {"error": message, "status": status, **extra}
        return jsonify(body), status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("unhandled error")
        return error(500, f"internal error: {type(e).__name__}")

    @app.get("/")
    def index():
        return jsonify({"service": "rigwatch-detector",
                        "endpoints": ["/metrics", "/healthz", "/readyz", "/api/v1/anomalies", "/api/v1/models",
                                      "POST /api/v1/retrain", "POST /api/v1/models/<detector>/promote",
                                      "POST /api/v1/models/<detector>/rollback", "/api/v1/feedback",
                                      "/api/v1/maintenance", "/api/v1/drift"]})

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        ready, detail = service.readiness()
        return jsonify({"ready": ready, **detail}), (200 if ready else 503)

    @app.get("/api/v1/anomalies")
    def anomalies():
        args = request.args
        unknown = set(args) - {"since", "detector", "min_score", "limit"}
        if unknown:
            return error(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        try:
            since = parse_time(args["since"], "since") if "since" in args else None
            min_score = float(args.get("min_score", "1"))
            limit = int(args.get("limit", "100"))
        except ValueError as e:
            msg = str(e) if str(e).startswith(("since", "until")) else f"bad number: {e}"
            return error(400, msg)
        if not 1 <= limit <= 1000:
            return error(400, f"limit: must be in 1..1000, got {limit}")
        if not math.isfinite(min_score) or min_score < 0:
            return error(400, f"min_score: must be a finite number >= 0, got {args.get('min_score')}")
        detector = args.get("detector")
        items = service.incidents()
        # every plugin's detectors, plus those of incidents kept from before a reload
        if detector is not None and detector not in service.detector_names() and \
                detector not in {i.detector for i in items}:
            return error(404, f"detector: unknown detector {detector!r}")
        kept, events = service.incidents_in_context(items)
        out = []
        for inc, d in reversed(kept):
            if since is not None and inc.end < since:
                continue
            if detector is not None and inc.detector != detector:
                continue
            if inc.peak_score < min_score:
                continue
            d.update(start=iso(inc.start), end=iso(inc.end), peak_time=iso(inc.peak_t), open=inc.is_open)
            out.append(d)
            if len(out) >= limit:
                break
        # the box's own events (a restart, a model load) with the incidents each explains
        shown = [{**e, "start": iso(e["start"]), "end": iso(e["end"])} for e in reversed(events)
                 if since is None or e["end"] >= since][:limit]
        return jsonify({"anomalies": out, "count": len(out), "events": shown})

    @app.get("/api/v1/models")
    def models():
        return jsonify({"models": service.models()})

    @app.get("/api/v1/drift")
    @app.get("/api/v1/drift/<detector>")
    def drift(detector: str | None = None):
        if request.args:
            return error(400, f"unknown query parameter(s): {', '.join(sorted(request.args))}")
        entries = service.drift_report()
        if detector is not None:
            entries = [e for e in entries if e["detector"] == detector]
            if not entries:
                return error(404, f"detector: no drift figures for {detector!r} (an unknown detector, or "
                                  "one of a family that measures no drift)")
        return jsonify({"detectors": entries})

    def refused(action: str):
        """The error response when the request may not mutate (no token configured, none sent, a
        wrong one); None when its bearer token is the configured one."""
        try:
            token = service.config.token(env)
        except ConfigError as e:  # RIGWATCH_API_TOKEN_FILE gone or unreadable since start-up
            # the message names the variable, the path and the OS error, never the token
            log.error("%s %s refused: API token unreadable: %s", request.method, request.path, e)
            return error(503, f"{action} is unavailable: the API token cannot be read ({e}); "
                              "restore the file, then retry")
        if not token:
            return error(503, f"{action} is disabled: no API token configured. Set RIGWATCH_API_TOKEN in the "
                              "environment or api_token in the config file, then send "
                              "'Authorization: Bearer <token>'")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            resp, status = error(401, "missing bearer token: send 'Authorization: Bearer <token>'")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rigwatch"'
            return resp, status
        if not hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return error(403, "invalid token")
        return None

    def json_body(keys: set[str] | None, example: str, *, optional: bool):
        """The request's JSON object ({} for no body when `optional`), or the 400 that refuses it
        (not an object, or a key outside `keys`; None: the caller checks the keys)."""
        if not request.data and optional:
            return {}, None
        body = request.get_json(silent=True) if request.data else None
        if not isinstance(body, dict):
            return None, error(400, f"body: expected a JSON object such as {example}")
        unknown = set(body) - keys if keys is not None else set()
        if unknown:
            return None, error(400, f"body: unknown key(s) {', '.join(sorted(unknown))}")
        return body, None

    def mutation(action: str, keys: set[str], example: str, *, optional: bool):
        """A mutating request's JSON object, or the response that refuses it (the token first, then
        the body: 503/401/403, 400)."""
        denied = refused(action)
        if denied is not None:
            return None, denied
        return json_body(keys, example, optional=optional)

    @app.post("/api/v1/retrain")
    def retrain():
        body, bad = mutation("retrain", {"detectors"}, '{"detectors": ["gpu_thermal"]}', optional=True)
        if bad is not None:
            return bad
        names = body.get("detectors")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return error(400, "detectors: expected a list of detector names")
            known = set(service.detector_names())
            missing = [n for n in names if n not in known]
            if missing:
                return error(404, f"detectors: unknown detector(s) {', '.join(missing)}")
        service.retrain(names)
        return jsonify({"status": "accepted", "detectors": names or sorted(service.detector_names())}), 202

    def registry_of(detector: str):
        registry = service.registry_for(detector)
        if registry is None:
            return None, error(404, f"detector: unknown detector {detector!r}" if detector not in
                               service.detector_names() else f"detector: {detector!r} keeps no model registry")
        return registry, None

    @app.post("/api/v1/models/<detector>/promote")
    def promote(detector: str):
        body, bad = mutation("promote", {"version"}, '{"version": 3}', optional=False)
        if bad is not None:
            return bad
        version = body.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            return error(400, f"version: expected a version number >= 1, got {version!r}")
        registry, failed = registry_of(detector)
        if failed is not None:
            return failed
        try:
            decision = registry.promote(detector, version)
        except RegistryError as e:
            return error(404, f"version: {e}")
        except ValueError as e:  # stored but does not load
            return error(409, f"version: {e}")
        return jsonify({"status": "promoted", "detector": detector, "champion": decision.version,
                        "effective": "at the next scoring step"})

    @app.post("/api/v1/models/<detector>/rollback")
    def rollback(detector: str):
        _, bad = mutation("rollback", set(), "{} (or no body)", optional=True)
        if bad is not None:
            return bad
        registry, failed = registry_of(detector)
        if failed is not None:
            return failed
        try:
            decision = registry.rollback(detector)
        except NoRollbackTarget as e:
            return error(409, f"detector: {e}")
        except RegistryError as e:
            return error(404, f"detector: {e}")
        return jsonify({"status": "rolled back", "detector": detector, "champion": decision.version,
                        "effective": "at the next scoring step"})

    register_label_routes(app, service, refused, json_body, error)

    return app
