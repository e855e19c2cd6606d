"""`make stack`: the production topology (Postgres, SeaweedFS, control planes behind a
balancer, workers on hosts of their own) run natively on one machine. Only tests and bench
import it."""
