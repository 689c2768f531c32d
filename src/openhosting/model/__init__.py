"""The typed configuration of drives, servers and resources, with its validation. Pure."""
