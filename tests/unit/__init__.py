"""Unit tests: the pure core and the shells on fake clocks or virtual time; no sockets, no processes, milliseconds."""
