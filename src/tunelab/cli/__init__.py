"""The command line: one file per verb. The only layer that prints or exits."""
