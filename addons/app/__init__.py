"""The process: the mitmproxy engine under aigw, the wiring of the addon chain (wiring.py), serving it
(serve.py), the CA, the runtime file, `--workers` and `aigw web`."""
