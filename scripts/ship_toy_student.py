"""Build the default toy student on this machine and ship it with the project
(src/reasonft/models/shipped/<name>/ with SHIPPED.json): what `make toy-student` runs.

The student is the one src/reasonft/conf/model/toy.yaml describes (with `shipped=false`: built here, never
copied from the shipped one). Folders of earlier shipped students with the same settings are
removed, so one student ships per setting. `--check` rebuilds into a scratch cache and compares
the weights with the shipped ones instead of shipping (what tests/models/test_shipped_student.py
runs when asked to).

    python scripts/ship_toy_student.py                  # build (or reuse the cached build), ship
    python scripts/ship_toy_student.py --check          # rebuild and compare, ship nothing
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_builder(**changes: object):
    from hydra.utils import instantiate

    import reasonft  # noqa: F401  (resolvers)
    from reasonft.config import compose_config

    cfg = compose_config(overrides=["paths.output_dir=/dev/null"])
    return instantiate(cfg.model.build, **changes), cfg


def main(argv: list[str] | None = None) -> int:
    from reasonft.models.toy import (
        SHIPPED_DIR,
        SHIPPED_FILE,
        file_sha256,
        ship,
        shipped_students,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rebuild and compare; ship nothing")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where the build goes (default: paths.cache_dir; --check: a scratch folder)")
    args = parser.parse_args(argv)
    builder, cfg = default_builder(shipped=False)
    if args.check:
        shipped = default_builder(shipped=True)[0].shipped_folder()
        if shipped is None:
            print("no shipped student has the default settings: run `make toy-student`", file=sys.stderr)
            return 1
        with tempfile.TemporaryDirectory() as scratch:
            built = Path(builder.build(args.cache or scratch))
            differ = [name for name in ("model.safetensors", "tokenizer.json", "config.json")
                      if file_sha256(built / name) != file_sha256(shipped / name)]
        if differ:
            print(f"rebuilt here, these differ from {shipped}: {differ}", file=sys.stderr)
            return 1
        print(f"rebuilt here: byte-identical to {shipped}")
        return 0
    built = builder.build(args.cache or cfg.paths.cache_dir)
    portable = builder.portable_settings()
    old = [folder for folder, record in shipped_students() if record.get("settings") == portable]
    folder = ship(built, SHIPPED_DIR)
    for stale in old:
        if stale != folder:
            for f in stale.iterdir():
                f.unlink()
            stale.rmdir()
    print(f"shipped {folder} ({SHIPPED_FILE} lists its files); commit it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
