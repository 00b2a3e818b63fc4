"""The command line: the document commands, `models`, `doctor` and `serve`; it parses, calls the library, prints
and exits. ``llamadoc.cli.app:main`` is the entry point."""
