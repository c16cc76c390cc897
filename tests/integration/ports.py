"""Free loopback ports for the processes an integration test starts (clusters, containers)."""

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel had free on 127.0.0.1 (all held at once, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
