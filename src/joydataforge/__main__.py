"""``python -m joydataforge`` is the ``joyforge`` command."""

from .cli import main

main()
