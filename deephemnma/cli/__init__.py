"""The ``deephemnma`` command line: one module per command (``add_args(parser)`` and ``main(args)``)."""
