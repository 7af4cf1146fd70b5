"""What rigwatch survives: one module per kind of fault, each test a thing that once broke.

Read these as the list of promises (each test starts real processes where the fault involves them):

- test_source_outage.py  — Prometheus goes away and comes back; a bad query belongs to its detector
- test_store.py          — kill -9 during a save, corrupt and unusable model versions, orphaned temp files
- test_config.py         — broken configs at start-up and at hot reload (exit 2 naming the key; the running
                           config stays)
- test_http.py           — hostile requests, big bodies and headers, idle connections, bursts, clients hanging
                           up, a vanished API token file (detector API and exporter)
"""
