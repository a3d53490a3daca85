"""The multi-host proving ground: namespace hosts (``netns``), the processes in them (``procs``),
the load and its figures (``load``), the delay proxy (``delayproxy``) and the faults (``ground``);
``tests/multihost`` asserts on it and ``bench/multihost.py`` reports it."""
