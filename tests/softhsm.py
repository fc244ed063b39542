"""A throwaway SoftHSM2 token for the HSM-key tests and `scripts/bench.py ca-hsm`.

`softhsm_token` writes a softhsm2.conf whose token directory is a temporary one, points
``SOFTHSM2_CONF`` at it (in ``os.environ``, so this process and every process it starts
use it) and initialises one token with ``softhsm2-util --init-token``. SoftHSM2 reads its
config once per process, when the module is first loaded: so one token directory per
process (a pytest session, one per xdist worker), restored at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MODULE_CANDIDATES: Final = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
PIN_ENV: Final = "MESHGATE_TEST_HSM_PIN"


@dataclass(frozen=True)
class SoftToken:
    module: str
    label: str
    pin: str
    so_pin: str
    conf: Path

    def env(self, pin: str | None = None) -> dict[str, str]:
        """What a CA process needs: the config path and the PIN in `PIN_ENV`."""
        return {"SOFTHSM2_CONF": str(self.conf), PIN_ENV: self.pin if pin is None else pin}


def softhsm_module() -> str:
    for candidate in MODULE_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise RuntimeError(
        "libsofthsm2.so not found: install Debian's softhsm2 "
        "(scripts/lib/setup.sh ensure_debian_packages does)"
    )


@contextlib.contextmanager
def softhsm_token(directory: Path, label: str = "meshgate-test") -> Iterator[SoftToken]:
    """One initialised SoftHSM2 token in `directory`, with SOFTHSM2_CONF set meanwhile."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    token = SoftToken(softhsm_module(), label, pin="246810", so_pin="13579", conf=conf)
    util = shutil.which("softhsm2-util")
    if util is None:
        raise RuntimeError("softhsm2-util not found: install Debian's softhsm2")
    saved = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            [
                util, "--init-token", "--free", "--label", label,
                "--so-pin", token.so_pin, "--pin", token.pin,
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield token
    finally:
        if saved is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = saved
