"""Secrets from the environment or from a file it names (`NAME_FILE`), the Docker-secrets way.

A container's environment is readable by anything allowed to `docker inspect` it, so the compose
stack hands secrets over as files (/run/secrets/...) and passes only their paths. The value is read
at each call, so rewriting the file rotates the secret without a restart.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class SecretFileError(ValueError):
    """`NAME_FILE` names a file that cannot be read; str() starts with the variable's name."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


def secret_from_env(name: str, environ: Mapping[str, str]) -> str | None:
    """NAME's value if set and non-empty, else the contents of the file NAME_FILE names (one trailing
    newline or CR/LF stripped: editors add one); None when neither gives a non-empty value."""
    value = environ.get(name)
    if value:
        return value
    path = environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SecretFileError(f"{name}_FILE", f"cannot read {path}: {e}") from None
    return text.removesuffix("\n").removesuffix("\r") or None
