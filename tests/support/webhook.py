"""The Alertmanager webhook target the end-to-end tests listen with.

It is the same receiver `make demo` prints notifications from (scripts/launcher.py), so the test
exercises the code a person sees: a tiny ThreadingHTTPServer on 127.0.0.1 that keeps every POSTed
notification (Alertmanager's webhook JSON) and answers 400 to anything that is not one.
"""
from scripts.launcher import WebhookReceiver

__all__ = ["WebhookReceiver"]
