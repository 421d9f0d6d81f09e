"""System tests: real Triton hubs, gateways, links and load generators as processes on loopback ports."""
