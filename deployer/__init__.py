"""A worker per host: claims replica slots under a lease, pulls versions into a sha256-verified
cache, starts and supervises serving processes. Talks to the control plane over HTTP only."""
