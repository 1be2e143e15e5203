"""Reading a LAMMPS input script into single commands, and what the hooks need to know from it.

LAMMPS' own parser handles variables and expressions; we only split the text into commands (joining
``&`` continuations and triple-quoted blocks, dropping comments) so that a driver can act between
commands: attach the uncertainty hook before the first ``run``, stop after a halt, swap the SNAP
coefficient file of an ensemble member.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from fitsnap_uq.errors import InputError

RUN_COMMANDS = ("run", "minimize", "rerun", "min_modify")
UNSUPPORTED = ("jump", "label", "next")


@dataclass
class Command:
    """One input-script command with where it came from (for error messages)."""

    text: str
    file: str
    line: int

    @property
    def word(self) -> str:
        """The command's first word (``run``, ``pair_coeff``, ...)."""
        parts = self.text.split(None, 1)
        return parts[0] if parts else ""


def _strip_comment(line: str) -> str:
    out, quote = [], None
    for ch in line:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        out.append(ch)
    return "".join(out)


def split_commands(text: str, file: str = "<script>") -> list[Command]:
    """The commands of an input script's text, in order."""
    commands: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        if line.count('"""') % 2 == 1:  # a triple-quoted block runs to its closing quotes
            block = [line]
            i += 1
            while i < len(lines) and lines[i].count('"""') % 2 == 0:
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
            commands.append(Command("\n".join(block), file, start + 1))
            i += 1
            continue
        current = _strip_comment(line).rstrip()
        while current.endswith("&") and i + 1 < len(lines):
            i += 1
            current = current[:-1] + " " + _strip_comment(lines[i]).strip()
        i += 1
        if current.strip():
            commands.append(Command(current.strip(), file, start + 1))
    return commands


def read_script(path: str | Path) -> list[Command]:
    """The commands of an input script file, with ``include`` files expanded in place.

    Raises:
        InputError: the file does not exist, or uses ``jump``/``label``/``next`` loops, which a
            command-by-command driver cannot follow.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("LAMMPS input script not found", file=str(path))
    out: list[Command] = []
    for cmd in split_commands(path.read_text(), str(path)):
        if cmd.word == "include" and "$" not in cmd.text:
            inc = Path(cmd.text.split(None, 1)[1].strip())
            out.extend(read_script(inc if inc.is_absolute() else path.parent / inc))
            continue
        if cmd.word in UNSUPPORTED:
            raise InputError(f"line {cmd.line}: '{cmd.word}' loops are not supported by fitsnap-uq's "
                             "command-by-command driver; unroll the loop", file=str(path))
        out.append(cmd)
    return out


@dataclass
class SnapCoeff:
    """The ``pair_coeff`` command of the snap (sub-)style: files and the element of each type."""

    index: int
    coeff_file: str
    param_file: str
    elements: list[str]
    hybrid: bool


def find_snap_pair_coeff(commands: list[Command]) -> SnapCoeff | None:
    """The last ``pair_coeff * * [snap] X.snapcoeff X.snapparam El ...`` command, if any."""
    found = None
    for i, cmd in enumerate(commands):
        if cmd.word != "pair_coeff":
            continue
        words = shlex.split(cmd.text)
        args = words[3:]
        hybrid = bool(args) and args[0] == "snap"
        if hybrid:
            args = args[1:]
        if len(args) >= 3 and (args[0].endswith(".snapcoeff") or args[1].endswith(".snapparam")):
            found = SnapCoeff(i, args[0], args[1], args[2:], hybrid)
    return found


def replace_coeff_file(command: Command, snap: SnapCoeff, new_file: str) -> Command:
    """The same ``pair_coeff`` command with another ``.snapcoeff`` file."""
    text = re.sub(rf"(?<!\S){re.escape(snap.coeff_file)}(?!\S)", new_file, command.text, count=1)
    return Command(text, command.file, command.line)


_MLIAP_NN = re.compile(r"(?<!\S)mliap\s+model\s+nn\s+(\S+)\s+descriptor\s+sna\s+(\S+)")


@dataclass
class MliapModel:
    """The ``pair_style ... mliap model nn MODEL descriptor sna DESCRIPTOR`` command of a script (an NN
    potential of ML-IAP, e.g. a member or the mean that ``fitsnap-uq nn-export`` writes).

    Attributes:
        index: position of the ``pair_style`` command; model_file, descriptor_file: as written there;
        elements: the element of each atom type from the mliap ``pair_coeff`` after it ([] if none).
    """

    index: int
    model_file: str
    descriptor_file: str
    elements: list[str]


def find_mliap_model(commands: list[Command]) -> MliapModel | None:
    """The last ``pair_style`` with an ML-IAP ``model nn`` (alone or in a hybrid style), if any."""
    found = None
    for i, cmd in enumerate(commands):
        if cmd.word == "pair_style":
            m = _MLIAP_NN.search(cmd.text)
            found = MliapModel(i, m.group(1), m.group(2), []) if m else found
        elif cmd.word == "pair_coeff" and found is not None:
            args = shlex.split(cmd.text)[3:]
            hybrid = bool(args) and args[0] == "mliap"
            if hybrid or (args and not any(a.endswith((".snapcoeff", ".snapparam")) for a in args)
                          and "hybrid" not in commands[found.index].text):
                found.elements = args[1:] if hybrid else args
    return found


def nn_script(script: str | Path, purpose: str) -> tuple[Path, list[Command], MliapModel]:
    """An input script's path, commands and ML-IAP ``model nn`` pair style; InputError when it has none."""
    path = Path(script).resolve()
    commands = read_script(path)
    model = find_mliap_model(commands)
    if model is None:
        raise InputError("the script has no 'pair_style [hybrid/overlay ...] mliap model nn MODEL descriptor "
                         f"sna DESCRIPTOR' command (or an include of fitsnap-uq nn-export's .pair.lmp); "
                         f"{purpose}", file=str(path))
    return path, commands, model


def replace_mliap_files(command: Command, model_file: str, descriptor_file: str) -> Command:
    """The same ``pair_style`` command with another ML-IAP model and descriptor file."""
    text = _MLIAP_NN.sub(f"mliap model nn {model_file} descriptor sna {descriptor_file}", command.text,
                         count=1)
    return Command(text, command.file, command.line)


def needs_hook(command: Command, prefix: str = "uq") -> bool:
    """Whether the hook must be attached before this command (a run, or per-atom ``d_uq_`` names)."""
    return command.word in RUN_COMMANDS or f"d_{prefix}_" in command.text


def snap_script(script: str | Path, purpose: str) -> tuple[Path, list[Command], SnapCoeff]:
    """An input script's path, commands and snap ``pair_coeff``; InputError when it has none.

    Args:
        purpose: what needs the snap pair style, for the message.
    """
    path = Path(script).resolve()
    commands = read_script(path)
    snap = find_snap_pair_coeff(commands)
    if snap is None:
        raise InputError("the script has no 'pair_coeff * * [snap] FILE.snapcoeff FILE.snapparam "
                         f"ELEMENTS' command; {purpose} needs pair_style snap", file=str(path))
    return path, commands, snap


def execute(lmp: object, cmd: Command, what: str = "") -> None:
    """Run one command; a LAMMPS error becomes an InputError naming the script file and line."""
    try:
        lmp.commands_string(cmd.text) if "\n" in cmd.text else lmp.command(cmd.text)  # type: ignore[attr-defined]
    except Exception as exc:
        first = cmd.text.splitlines()[0][:80]
        raise InputError(f"{what}LAMMPS stopped at line {cmd.line} ({first}): {str(exc).strip()}",
                         file=cmd.file) from None
