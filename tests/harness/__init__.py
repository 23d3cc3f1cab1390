"""What the tests run the pool with: processes and in-process pools, fake backends
(Ollama, llama.cpp, NVML), hostile hosts, real servers (PostgreSQL, Redis, nginx), a
browser, the JS clients and an SSE reader."""
