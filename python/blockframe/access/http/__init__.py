"""``blockframe serve``: the HTTP API, its OpenAPI description and the web page."""
