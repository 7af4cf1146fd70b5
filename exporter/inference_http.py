"""Inference-server sources over HTTP: Ollama `GET /api/ps` and ComfyUI `GET /queue`.

Each source asks its server once per `poll()` with a short timeout and turns the answer into a
`ServerState` with the parsers of `exporter.inference`. Whatever goes wrong — connection refused, a
timeout, a non-200 status, a body that is not JSON or not the expected document — the poll answers
`ServerState(server, up=False)` and never raises: the collector polls on a background thread and one
bad server must not hide the others. The reason is logged once when a server goes down (URLs
redacted: they may carry credentials), and once when it comes back.

`timeout` bounds the connect and each read (requests' semantics), so a server that accepts the
connection and then says nothing is given up after about `timeout` seconds.
"""
from __future__ import annotations

import logging

import requests

from exporter.inference import ServerState, comfyui_state, ollama_state
from rigwatch.redact import redact_text, redact_url

log = logging.getLogger("rigwatch.exporter.inference")

DEFAULT_TIMEOUT_S = 2.0


class HttpSource:
    """One server polled at `url + path`; subclasses say how a 200 JSON answer becomes a state."""

    path = ""

    def __init__(self, url: str, server: str, session: requests.Session | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        if timeout <= 0:
            raise ValueError(f"{server}: timeout must be > 0, got {timeout}")
        self.url = url.rstrip("/")
        self.server = server
        self.timeout = timeout
        # A Session opens nothing until the first request; injected so tests (and a caller that
        # wants its own TLS settings) can hand one in.
        self.session = session if session is not None else requests.Session()
        self._up: bool | None = None  # None until the first poll: the first failure is logged too

    def state(self, doc: object) -> ServerState:
        raise NotImplementedError

    def poll(self) -> ServerState:
        try:
            # No redirects: a server that sends us elsewhere is not answering this API.
            r = self.session.get(self.url + self.path, timeout=self.timeout, allow_redirects=False)
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code} from {self.path}")
            state = self.state(r.json())  # JSON errors are ValueErrors (requests.JSONDecodeError)
        # OverflowError: a number the JSON parser accepts (Infinity, 1e999) that int() cannot take.
        except (requests.RequestException, ValueError, OverflowError) as e:
            if self._up is not False:
                log.warning("inference server %s at %s is not answering (inference_server_up 0, retried "
                            "every poll): %s", self.server, redact_url(self.url), redact_text(str(e)))
            self._up = False
            return ServerState(self.server, up=False)
        if self._up is False:
            log.info("inference server %s at %s is back", self.server, redact_url(self.url))
        self._up = True
        return state


class OllamaSource(HttpSource):
    """Ollama: the models it holds (`GET /api/ps`); it publishes no request counts (None: unknown)."""

    path = "/api/ps"

    def __init__(self, url: str, server: str = "ollama", session: requests.Session | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(url, server, session=session, timeout=timeout)

    def state(self, doc: object) -> ServerState:
        return ollama_state(self.server, doc)


class ComfyUISource(HttpSource):
    """ComfyUI: running and pending prompts (`GET /queue`). /queue names no loaded model: models=()."""

    path = "/queue"

    def __init__(self, url: str, server: str = "comfyui", session: requests.Session | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S):
        super().__init__(url, server, session=session, timeout=timeout)

    def state(self, doc: object) -> ServerState:
        return comfyui_state(self.server, doc)
