"""The local HTTP receiver: the endpoint the HTTP sink posts to in the demo and the tests.

It records what arrives, deduplicates on each change's idempotency key (a sender that retries must
not count twice), and injects the faults a real endpoint has: an outage, latency, throttling,
errors, lost acknowledgements and refused records. ``state`` is the bookkeeping, ``app`` the two
Starlette apps (ingest and control), ``server`` runs them, ``client`` drives the control port.
"""
