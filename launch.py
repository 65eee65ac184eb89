"""`python launch.py` opens Fine-Tune Studio on http://127.0.0.1:7860."""
import argparse
import sys

from backend.commands.ui import add_arguments


def main() -> int:
    parser = argparse.ArgumentParser(description="Open Fine-Tune Studio.")
    add_arguments(parser)
    from studio.launcher import launch_from_args

    launch_from_args(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
