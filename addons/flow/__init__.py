"""What the chain knows about one request: its typed per-flow state (state.py, a leaf module), the
records an interception produces (records.py) and which client sent it (clients.py)."""
