"""One module per `swapwatch` subcommand: each has ``add_parser(subparsers)`` and ``run(args) -> int``."""
