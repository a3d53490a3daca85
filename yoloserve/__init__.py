"""The ``yoloserve`` console command: sub-commands from each package, gathered in :mod:`.cli`."""
