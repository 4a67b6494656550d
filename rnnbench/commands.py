"""``rnnbench plugins``: what is installed, and which distribution provides it; the subcommands' parser."""

from __future__ import annotations

import argparse
from typing import NoReturn

from rnnbench.errors import RnnbenchError
from rnnbench.manager import get_registry


def plugins_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rnnbench plugins", description="List registered cells and tasks.")
    parser.parse_args(argv)
    registry = get_registry()
    for kind, table in (("cell", registry.cells), ("task", registry.tasks)):
        print(f"{kind}s:")
        for name, spec in sorted(table.items()):
            fused = f" [fused: {spec.fused}]" if getattr(spec, "fused", None) else ""
            print(f"  {name:<22} {registry.provenance(kind, name):<24} {spec.description}{fused}")
    return 0


class SubcommandParser(argparse.ArgumentParser):
    """The argument parser of an ``rnnbench`` subcommand: a usage error is a :class:`RnnbenchError` (one line,
    exit status 2), naming the subcommand's help."""

    def error(self, message: str) -> NoReturn:
        raise RnnbenchError(f"{message} (see {self.prog} --help)")
