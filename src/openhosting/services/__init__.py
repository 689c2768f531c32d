"""What the platform does, one module per area, over the store and the drivers."""
