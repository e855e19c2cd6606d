"""The data plane: the stable URL `/serve/{deployment}/...`, spreading calls over a
deployment's ready endpoints. Knows nothing of the database: it is told the endpoints."""
