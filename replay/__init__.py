"""Journal reading, deterministic replay and divergence reports for slirptrio sessions."""
