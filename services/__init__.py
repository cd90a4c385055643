"""Long-running services and libraries around the stream: SDK, gateway, warehouse, workers."""
