"""Pure bounce handling: VERP return paths, DSN parsing, classification. No I/O, no gateway imports."""
