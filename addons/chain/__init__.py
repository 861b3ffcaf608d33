"""The mitmproxy addons a request passes, one concern per module, in the order app/wiring.py puts them
(guard, shutdown, proxy, routing, admin, interception, governance, timeouts, ...), and their pure helpers."""
