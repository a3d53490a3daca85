"""``python -m yoloserve`` is ``yoloserve``."""

from yoloserve.cli import main

main()
