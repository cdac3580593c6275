"""`python -m seqctr.cli ...`: how Ray Jobs run seqctr commands (the shipped package, not an install)."""

from seqctr.cli.main import app

app()
