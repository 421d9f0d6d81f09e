"""The routing simulator: the production pipeline, forwarder and router on a virtual-time loop.

``clock`` (the virtual-time event loop), ``scenario`` (hubs and the request stream, drawn up front),
``hubs`` (simulated hubs as ``Backend``s, and the naive baselines), ``oracle`` (the clairvoyant
baseline), ``run`` (one run under one policy), ``report`` (table, targets, plot). The command line is
``python -m bench.simulator``.
"""
