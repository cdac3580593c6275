"""The `seqctr` command line: the only package that imports typer (`seqctr.cli.main:app`)."""
