"""The control plane: the REST API (routes -> services -> repositories -> tables), keys and
policy, the dashboard, and the only package that touches the database. Nobody's library:
other packages reach it over HTTP."""
