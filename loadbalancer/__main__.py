"""``python -m loadbalancer``: the same as ``yoloserve lb``."""

from loadbalancer.cli import lb_command

if __name__ == "__main__":
    lb_command(prog_name="python -m loadbalancer")
