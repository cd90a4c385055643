"""The inference gateway: an OpenAI-compatible API in front of vLLM or a local model."""
