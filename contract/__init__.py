"""What crosses process boundaries: wire models, shared enums, the v2 datatype table,
request ids and log setup, and the one HTTP toolkit. Imports nothing of ours."""
