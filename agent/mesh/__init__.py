"""The fused agent daemon (``clusterctl-agent run``): WireGuard mesh, discovery, peer mounts,
liveness and the membership table. See docs/agent.md."""
