"""Use cases: the rules and the transaction around them."""
