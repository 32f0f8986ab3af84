"""The sans-I/O stack: events in, effects out. No sockets, clocks or randomness of its own."""
