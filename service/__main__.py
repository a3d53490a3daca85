"""``python -m service`` is ``yoloserve``."""

from service.cli import main

main()
