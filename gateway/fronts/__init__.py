"""The fronts: the protocols a caller reaches the gateway by, each one thin.

A front decodes a call, builds a ``Call`` from its metadata, hands both to the inference service
(``gateway.service``) and encodes the answer; every check, bill and count lives in the service, so a
new front cannot forget one.

    http.py     the KServe v2 HTTP API (aiohttp): the app factory and its routes
    admin.py    the admin API, an aiohttp sub-app under /admin/ with its own key check
    grpc.py     the KServe v2 gRPC API (grpc.aio, on the same loop) and grpc.health.v1
    grpc_codec.py  gRPC messages <-> protocol value objects (raw or typed contents)
"""
