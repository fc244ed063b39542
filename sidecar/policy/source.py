"""Reading a policy directory and splitting Cedar text into located policy statements.

Cedar's parser reports errors without a position, so each file is cut into statements here
(top-level `;` outside strings, comments and brackets) and each statement is parsed on its
own: an error then names the file and the line where its policy starts.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

__all__ = [
    "ENTITIES_FILE",
    "TESTS_FILE",
    "PolicyDirectory",
    "PolicyProblem",
    "Statement",
    "directory_fingerprint",
    "read_policy_directory",
    "split_statements",
]

ENTITIES_FILE: Final = "entities.json"
TESTS_FILE: Final = "tests.toml"
POLICY_SUFFIX: Final = ".cedar"
SCHEMA_SUFFIX: Final = ".cedarschema"
_ID_ANNOTATION_RE: Final = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')


@final
@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a policy directory, located as precisely as Cedar allows."""

    file: str
    message: str
    line: int | None = None
    policy_id: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f" policy {self.policy_id!r}:" if self.policy_id else ""
        return f"{where}:{who} {self.message}"


@final
@dataclass(frozen=True, slots=True)
class Statement:
    """One policy's text (annotations included) and the line it starts on (1-based)."""

    text: str
    line: int
    terminated: bool

    @property
    def annotated_id(self) -> str | None:
        """The `@id` value as written, found without parsing (for error messages)."""
        match = _ID_ANNOTATION_RE.search(self.text)
        return match.group(1) if match else None


@final
@dataclass(frozen=True, slots=True)
class PolicyDirectory:
    """The raw inputs of one load: every file read exactly once, so hashing and parsing
    see the same bytes even if an editor writes to the directory meanwhile."""

    path: Path
    policy_files: tuple[tuple[str, str], ...]  # (name, text), sorted by name
    schema_file: tuple[str, str]
    entities_file: tuple[str, str]

    @property
    def files(self) -> tuple[str, ...]:
        names = [name for name, _ in self.policy_files]
        return (*names, self.schema_file[0], self.entities_file[0])

    @property
    def version(self) -> str:
        """A content hash of every input: equal versions decide every request alike."""
        digest = hashlib.sha256()
        for name, text in (*self.policy_files, self.schema_file, self.entities_file):
            for part in (name.encode(), text.encode()):
                digest.update(len(part).to_bytes(8, "big"))
                digest.update(part)
        return digest.hexdigest()[:16]


def _is_input(name: str) -> bool:
    # Editors leave `.x.cedar.swp`, `x.cedar~` and `.#x.cedar` behind; none of them count.
    if name.startswith((".", "#")):
        return False
    return name.endswith((POLICY_SUFFIX, SCHEMA_SUFFIX)) or name == ENTITIES_FILE


def read_policy_directory(directory: Path) -> tuple[PolicyDirectory | None, list[PolicyProblem]]:
    """Read the inputs of `directory`; a missing piece is a problem, never "no policies"."""
    problems: list[PolicyProblem] = []
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.is_file())
    except OSError as exc:
        return None, [PolicyProblem(str(directory), f"cannot list directory: {exc.strerror}")]
    texts: dict[str, str] = {}
    for name in filter(_is_input, names):
        try:
            texts[name] = (directory / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # A file deleted between listing and reading lands here too.
            problems.append(PolicyProblem(name, f"cannot read: {exc}"))
    policies = tuple((n, t) for n, t in texts.items() if n.endswith(POLICY_SUFFIX))
    schemas = [(n, t) for n, t in texts.items() if n.endswith(SCHEMA_SUFFIX)]
    if not policies and not any(n.endswith(POLICY_SUFFIX) for n in names):
        problems.append(PolicyProblem(str(directory), f"no *{POLICY_SUFFIX} policy files"))
    if len(schemas) != 1 and not any(p.file.endswith(SCHEMA_SUFFIX) for p in problems):
        found = ", ".join(n for n, _ in schemas) or "none"
        problems.append(
            PolicyProblem(str(directory), f"expected exactly one *{SCHEMA_SUFFIX}, found {found}")
        )
    if ENTITIES_FILE not in texts and not any(p.file == ENTITIES_FILE for p in problems):
        problems.append(PolicyProblem(str(directory), f"missing {ENTITIES_FILE}"))
    if problems:
        return None, problems
    source = PolicyDirectory(directory, policies, schemas[0], (ENTITIES_FILE, texts[ENTITIES_FILE]))
    return source, []


def directory_fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, size, mtime_ns) of every input file; None when the directory is unreadable.

    Cheap enough to poll every few hundred milliseconds; a change means "reload now".
    """
    try:
        entries = [e for e in os.scandir(directory) if _is_input(e.name)]
        stats = [(e.name, e.stat()) for e in entries]
    except OSError:
        return None
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


def split_statements(text: str) -> list[Statement]:
    """Cut Cedar policy text at top-level `;`, skipping strings and `//` comments.

    A trailing statement without `;` (a half-written file) is returned with
    `terminated=False` so the caller can report it at its line.
    """
    statements: list[Statement] = []
    depth = 0
    start: int | None = None
    line = 1
    start_line = 1
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\n":
                    line += 1
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == ";" and depth <= 0:
            statements.append(Statement(text[start : i + 1], start_line, terminated=True))
            start, depth = None, 0
        i += 1
    if start is not None:
        statements.append(Statement(text[start:], start_line, terminated=False))
    return statements
