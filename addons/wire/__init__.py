"""Pure protocol code: bytes in, events out. SSE and AWS event-stream decoders and one parser per API;
no mitmproxy, no store."""
