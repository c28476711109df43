"""One module per `mage-harness` command group; each exposes register(subparsers)."""
