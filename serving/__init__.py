"""One process per replica: a runtime from `serving/runtimes/` answering the protocols in
`serving/protocols/` (v2, TF Serving v1, TorchServe), with batching and declared pipelines;
registers its endpoint with the control plane and heartbeats."""
