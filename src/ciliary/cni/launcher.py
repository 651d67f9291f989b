"""The executables a container runtime runs for the CNI plugins: Python started isolated and
without ``site``.

Why not pip's console scripts: they start the venv's interpreter as a program would be started,
so ``site`` runs, adds the site directories and executes every ``.pth`` file in them (setuptools'
``distutils-precedence.pth`` imports a module on every start, an editable install adds its own):
~4 ms of the ~12 ms an exec of nothing costs on a 2-core node. A plugin needs the standard
library and ``ciliary.cni`` only, and a runtime execs it for every verb of every pod, so
``scripts/setup.sh`` replaces those two scripts with these launchers:

* ``#!<python> -IS``: ``-I`` (isolated: ``PYTHON*`` variables, the user site and the script's
  directory are ignored, so whatever environment a runtime passes cannot change what runs) and
  ``-S`` (no ``site``);
* the one directory that holds the ``ciliary`` package appended to ``sys.path`` (the source
  tree of an editable install, else the site-packages directory: with ``-S`` nothing else of it
  is read);
* the plugin module's ``main``, as the console script would call it.

A later ``pip install`` writes pip's scripts again: the plugins still work, only slower, until
setup runs again (``tests/unit/cni/test_exec_imports.py`` checks the installed ones).
"""

from __future__ import annotations

import sys
from pathlib import Path

PLUGINS = {"ciliary-cni": "ciliary.cni.main", "ciliary-ipam": "ciliary.cni.ipam_main"}
"""Executable name -> the module whose ``main`` it runs."""

INTERPRETER_FLAGS = "-IS"


class LauncherError(Exception):
    """A launcher cannot be written for this interpreter or package location."""


def package_root() -> Path:
    """The directory that holds the ``ciliary`` package in use."""
    import ciliary  # noqa: PLC0415 - the package this module is part of

    return Path(ciliary.__file__).resolve().parent.parent


def script(python: str, root: str, module: str) -> str:
    """The launcher's text: ``python`` with :data:`INTERPRETER_FLAGS`, ``root`` on ``sys.path``,
    ``module``'s ``main``."""
    if not python.startswith("/") or any(c.isspace() for c in python):
        # the kernel splits a #! line at the first blank: the flags would become the path
        raise LauncherError(
            f"interpreter path {python!r} must be absolute and without whitespace to be a #! line"
        )
    line = f"#!{python} {INTERPRETER_FLAGS}"
    if len(line) >= 256:  # BINPRM_BUF_SIZE: the kernel reads no more of a #! line
        raise LauncherError(f"interpreter path {python!r} is too long for a #! line")
    return (
        f"{line}\n"
        "# Written by ciliary.cni.launcher (scripts/setup.sh): a CNI plugin, isolated, no site.\n"
        "import sys\n"
        f"sys.path.append({root!r})\n"
        f"from {module} import main\n"
        "sys.exit(main())\n"
    )


def install(bin_dir: Path, python: str | None = None, root: Path | None = None) -> list[Path]:
    """Write every plugin's launcher into ``bin_dir`` (replacing the file atomically)."""
    python = python or sys.executable
    root_dir = str(root or package_root())
    written = []
    for name, module in PLUGINS.items():
        target = bin_dir / name
        tmp = bin_dir / f".{name}.tmp"
        tmp.write_text(script(python, root_dir, module))
        tmp.chmod(0o755)
        tmp.replace(target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(
            "usage: python -m ciliary.cni.launcher BIN_DIR (an existing directory)", file=sys.stderr
        )
        return 2
    try:
        for path in install(Path(args[0])):
            print(f"wrote {path}")
    except (LauncherError, OSError) as err:
        print(f"ciliary.cni.launcher: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
