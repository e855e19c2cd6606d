"""Language-model serving: the continuous-batching engine (torch; imported by the hf
runtime only)."""
