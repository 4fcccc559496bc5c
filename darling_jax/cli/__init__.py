"""The `darling-jax` command line: thin parsers that call one library function each."""
