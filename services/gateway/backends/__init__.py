"""Model backends behind one interface: OpenAI-compatible upstreams and local models."""
