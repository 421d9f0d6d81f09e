"""railgate: the edge-to-hub inference gateway.

Public surface: the `railgate` CLI (gateway/cli.py), the HTTP API (gateway/fronts/http.py, README), the
config file (gateway/config.py, deploy/railgate.yaml) and `edge.EdgeRuntime`. Everything else may
change freely.
"""
