"""The projections certplane runs, by name.

Kept apart from `service` (which imports every projection and its crypto) so that the CLI
can check a name an operator typed without loading them.
"""

NAMES = ("certificates", "dns_targets", "router_config", "audit", "sealer")
