"""In-process tests: local ONNX Runtime, aiohttp test servers, fresh interpreters; no hub."""
