"""Flask app factory: /metrics, /healthz, /readyz and the JSON API over a DetectorService.

Handlers only read the service's finished state; scoring happens in scheduler jobs. Every error is
a JSON body {"error": ..., "status": N}. POST /api/v1/retrain needs `Authorization: Bearer <token>`
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
from detector.metrics import DetectorCollector
from detector.timefmt import iso, parse_rfc3339

log = logging.getLogger("rigwatch.detector.api")


def parse_time(value: str, name: str) -> float:
    """Epoch seconds or RFC3339 (2026-11-26T10:00:00Z) -> epoch seconds; ValueError naming the param."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parse_rfc3339(value)
    except ValueError as e:
        raise ValueError(f"{name}: expected epoch seconds or RFC3339 with a zone (Z or +00:00), "
                         f"got {value!r}") from e


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
                                      "/api/v1/drift", "POST /api/v1/retrain"]})

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
        out = []
        for inc in reversed(items):
            if since is not None and inc.end < since:
                continue
            if detector is not None and inc.detector != detector:
                continue
            if inc.peak_score < min_score:
                continue
            d = inc.to_dict(iso)
            d["open"] = inc.is_open
            out.append(d)
            if len(out) >= limit:
                break
        return jsonify({"anomalies": out, "count": len(out)})

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

    @app.post("/api/v1/retrain")
    def retrain():
        try:
            token = service.config.token(env)
        except ConfigError as e:  # RIGWATCH_API_TOKEN_FILE gone or unreadable since start-up
            # the message names the variable, the path and the OS error, never the token
            log.error("POST /api/v1/retrain refused: API token unreadable: %s", e)
            return error(503, f"retrain is unavailable: the API token cannot be read ({e}); "
                              "restore the file, then retry")
        if not token:
            return error(503, "retrain is disabled: no API token configured. Set RIGWATCH_API_TOKEN in the "
                              "environment or api_token in the config file, then send "
                              "'Authorization: Bearer <token>'")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            resp, status = error(401, "missing bearer token: send 'Authorization: Bearer <token>'")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rigwatch"'
            return resp, status
        if not hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
            return error(403, "invalid token")
        body = {}
        if request.data:
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return error(400, "body: expected a JSON object such as {\"detectors\": [\"gpu_thermal\"]}")
        unknown = set(body) - {"detectors"}
        if unknown:
            return error(400, f"body: unknown key(s) {', '.join(sorted(unknown))}")
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

    return app
