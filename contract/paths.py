"""Where things are on the control plane's HTTP surface."""

API_PREFIX = "/api/v1"  # the REST API
SERVE_PREFIX = "/serve/"  # the stable URL: /serve/{deployment}/...
