"""labtel.query_api: the HTTP API that reads events, traces and analyses back out."""
