"""The `hyenalens` command line: the one module that imports every layer."""
