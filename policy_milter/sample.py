"""``policy-milter init DIR``: a starting rules directory, copied from the sample rules the
package carries (``rules/`` in the repository), whose comments document every feature.

It never overwrites: an admin's rules are worth more than a sample, so DIR must be new or
empty and each file is created exclusively.
"""

from __future__ import annotations

import argparse
import errno
import sys
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from .exitcodes import EXIT_USAGE

RULES = files(__package__) / "sample_rules"


def sample_files() -> list[Traversable]:
    return sorted((f for f in RULES.iterdir() if f.is_file()), key=lambda f: f.name)


def write(directory: Path) -> list[Path]:
    """Copy the sample rules into ``directory`` (made if missing); the paths written.

    Raises FileExistsError naming what is in the way, or another OSError."""
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(errno.EEXIST, "not empty", str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in sample_files():
        path = directory / sample.name
        with path.open("xb") as out:  # exclusive: a file that appeared meanwhile stays
            out.write(sample.read_bytes())
        written.append(path)
    return written


def init(args: argparse.Namespace) -> int:
    try:
        written = write(Path(args.dir))
    except FileExistsError as err:
        print(f"policy-milter: {err.filename} is in the way: init writes only into a new or "
              "empty directory", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"policy-milter: cannot write {err.filename or args.dir}: {err.strerror}",
              file=sys.stderr)
        return EXIT_USAGE
    for path in written:
        print(f"wrote {path}")
    print(f"check them with: policy-milter check --rules {args.dir}")
    return 0
