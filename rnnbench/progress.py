"""Progress of a training loop: a tqdm bar in an interactive terminal, periodic log lines otherwise (internal)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("rnnbench")


class Progress:
    def __init__(self, mode: str, total: int, initial: int, label: str) -> None:
        interactive = sys.stderr.isatty()
        self.mode = ("bar" if interactive else "log") if mode == "auto" else mode
        self.bar = None
        self.label = label
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, dynamic_ncols=True, leave=False)

    def update(self, step: int, advanced: int, values: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.update(advanced)
            self.bar.set_postfix_str(text, refresh=False)
        elif self.mode == "log":
            log.info("%s step %d %s", self.label, step, text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
