"""Development tooling, never imported by the product: ``procs`` (the one way to start and stop a
child process), ``devstack`` (hubs, links, gateways and nginx as typed services, and stacks of them),
``demo``, ``link`` (the ``railgate link`` backbone emulator) and ``imports`` (the package import
graph and its rules, ``python -m devtools.imports``). ``hub/`` (the dev Triton hub) and ``models/``
(the model builders) are dev tooling too. The runtime image ships none of them.
"""
