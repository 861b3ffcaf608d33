"""`aigw serve --workers N`: N gateway processes on one listener, one of them owning the database.

The process started by `aigw serve` is worker 0, the *primary*: a full gateway as with one worker,
which also owns the DuckDB file (the recorder), the admin API, `/metrics` and the runtime file. It
starts workers 1…N-1 (`supervisor.child_main`), each a full mitmproxy engine with aigw's addons,
restarts one that dies, and forwards SIGTERM/SIGINT to them (`supervisor.py`).

Every process binds the listener with SO_REUSEPORT (`process.SharedPortLoop`): the kernel spreads new
connections over the processes by their address hash, which balances far better than processes
racing to accept on one inherited socket.

Primary and workers talk over one unix socket (in a private 0700 directory), length-prefixed frames
(`protocol.py`); the primary's end is `hub.py`, a worker's `link.py`:

- worker → primary: records (the spool's JSON lines, `addons/store/spool.py`, batched over
  `link.FLUSH_DELAY`), admin API requests (forwarded whole, answered by the primary's AdminApi,
  `admin.py`), keys' last-used times, a snapshot of the worker's metrics (every second, summed by
  `prometheus.py`), goodbye;
- primary → worker: state (admin token, keys, governance policy, period spend, why recording
  fails) at start and on every change (checked every 0.2 s), admin API answers.

Back-pressure: a worker whose unsent records exceed `link.HIGH_WATER` bytes answers new requests 503
(overloaded) until the primary catches up; memory stays bounded. A worker that loses the primary
shuts down gracefully. When a worker's connection ends, the primary ends the interceptions it had
left open (status failed), then starts a new worker in its place.
"""
