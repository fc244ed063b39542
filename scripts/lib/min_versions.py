"""Print the lowest versions pyproject.toml allows, one `name==version` a line.

`scripts/test.sh` installs exactly these into a separate virtualenv and runs the pure tests
with them, so the lower bounds stay true as the code grows (cedarpy 4.1 once passed as a
bound while lacking the handles the policy engine uses). Extras in a requirement are kept.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_LOWER = re.compile(r"^\s*([A-Za-z0-9_.-]+(?:\[[^\]]+\])?)\s*>=\s*([^,;\s]+)")


def pins(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    out = []
    # The core dependencies and the `postgres` and `tracing` extras (their tests are
    # collected with the rest).
    extras = project["optional-dependencies"]
    for requirement in [*project["dependencies"], *extras["postgres"], *extras["tracing"]]:
        match = _LOWER.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: dependency {requirement!r} has no >= lower bound")
        out.append(f"{match.group(1)}=={match.group(2)}")
    return out


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    sys.stdout.write("".join(f"{pin}\n" for pin in pins(root / "pyproject.toml")))
