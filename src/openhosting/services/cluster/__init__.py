"""Hosts of the cluster: their registry, drivers and storages, placement, the nodes' shared
operations and events."""
