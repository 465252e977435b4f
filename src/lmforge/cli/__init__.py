"""The `lmforge` command: one module per verb, in main.py's table."""
