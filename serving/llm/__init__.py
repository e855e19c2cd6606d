"""Language-model serving: the continuous-batching engine (torch; imported by serving.runtimes.hf only)."""
