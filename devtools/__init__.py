"""Development tooling, never imported by the product: the dev stack (hubs, links, gateways as
processes), the demo and the ``railgate link`` backbone emulator. ``hub/`` (the dev Triton hub) and
``models/`` (the model builders) are dev tooling too. The runtime image ships none of them.
"""
