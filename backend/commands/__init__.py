"""The top layer, with backend/cli.py: one module per `ftstudio` subcommand, each `add_parser(subparsers)`.

A command parses its arguments and calls the layers below (and, for `ftstudio ui`, the studio).
"""
