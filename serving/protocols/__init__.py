"""The wire protocols a serving process speaks, each a thin front end over one runtime call:
`v2` (Open Inference Protocol, the reference), `v1` (TF Serving / KServe v1 REST) and
`torchserve` (TorchServe's inference API). `http` holds what they share on the ASGI side."""
