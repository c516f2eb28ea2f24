"""The systemd unit behind ``edgekit run ... --print-systemd-unit``.

The quoting is checked three ways: literal expectations from systemd.syntax(7) and
systemd.service(5) ("Command lines"), a reader that follows those rules, and systemd itself
(``systemd-analyze verify``, when installed): it must accept the unit without a warning and, for
an executable path, report back exactly the path we quoted.
"""

from __future__ import annotations

import configparser
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from edgekit.errors import EdgekitError
from edgekit.serve.service import quote_argument, systemd_unit

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")

#: arguments a user can put on an `edgekit run` line that a naive unit would mangle
TRICKY = [
    "/data/my bundle",
    'say "hi"',
    "it's",
    "100%",
    "%n%i",
    "$HOME",
    "${HOME}",
    "$$",
    "back\\slash",
    "C:\\\\share",
    "tab\there",
    "two\nlines",
    "",
    ";",
    "\\;",
    "ü-é",
    "-dash",
    "@at",
    "a=b",
    "rtsp://user:p%40ss@cam/$stream",
]
COMMAND = [
    "/home/pi/venv/bin/edgekit",
    "run",
    "/home/pi/brick.rpi4",
    "--source",
    "0",
    "--events",
    "/home/pi/events.jsonl",
]


def systemd_words(exec_start: str) -> list[str]:
    """Read an ExecStart= value of double-quoted words the way systemd does.

    systemd.syntax(7): C escapes inside quotes; systemd.unit(5): "%%" is "%"; systemd.service(5):
    "$$" is "$". Only the fully quoted form that systemd_unit writes is understood here.
    """
    word = r'"((?:[^"\\]|\\.)*)"'
    assert re.fullmatch(rf"{word}(?: {word})*", exec_start, flags=re.S), exec_start
    escapes = {
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
        '"': '"',
        "'": "'",
        "s": " ",
    }

    def unescape(match: re.Match) -> str:
        text = match.group(1)
        return chr(int(text[1:], 16)) if text.startswith("x") else escapes[text]

    words = []
    for quoted in re.findall(word, exec_start, flags=re.S):
        text = re.sub(r"\\(x[0-9a-fA-F]{2}|.)", unescape, quoted, flags=re.S)
        words.append(text.replace("%%", "%").replace("$$", "$"))
    return words


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)  # strict: no key set twice
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_unit_restarts_on_failure_as_a_non_root_user_after_the_network():
    unit = parse_unit(systemd_unit(COMMAND, user="pi", working_directory="/home/pi"))
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    service = unit["Service"]
    assert service["User"] == "pi"
    assert service["WorkingDirectory"] == "/home/pi"
    assert service["Restart"] == "on-failure"
    assert int(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 10  # time to finish a frame and flush the sinks
    assert service["Environment"] == "PYTHONUNBUFFERED=1"
    assert service["NoNewPrivileges"] == "yes"
    assert service["SupplementaryGroups"] == "video"  # the camera stays reachable
    assert "PrivateDevices" not in service  # it would hide /dev/video*
    assert systemd_words(service["ExecStart"]) == COMMAND
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_quoting_escapes_quotes_backslashes_percent_and_dollar():
    assert quote_argument("plain") == '"plain"'
    assert quote_argument("with space") == '"with space"'
    assert quote_argument('say "hi"') == r'"say \"hi\""'
    assert quote_argument("it's") == '"it\'s"'  # a single quote inside double quotes is literal
    assert quote_argument("back\\slash") == r'"back\\slash"'
    assert quote_argument("100%") == '"100%%"'  # %n would be the unit name
    assert quote_argument("$HOME") == '"$$HOME"'  # $HOME would be expanded
    assert quote_argument("two\nlines\t") == r'"two\nlines\t"'
    assert quote_argument("bell\x07del\x7f") == r'"bell\adel\x7f"'
    assert quote_argument(";") == '";"'  # only an unquoted ; separates commands
    assert quote_argument("") == '""'


def test_every_argument_reads_back_unchanged_under_systemd_quoting():
    unit = parse_unit(systemd_unit([COMMAND[0], *TRICKY], user="pi", working_directory="/home/pi"))
    assert systemd_words(unit["Service"]["ExecStart"]) == [COMMAND[0], *TRICKY]


def test_root_is_refused():
    for user in ("root", "0"):
        with pytest.raises(EdgekitError, match="must not run as root"):
            systemd_unit(COMMAND, user=user, working_directory="/home/pi")


@pytest.mark.parametrize(
    "command,user,working_directory,match",
    [
        (["edgekit", "run"], "pi", "/home/pi", "absolute path of the program"),
        (['/home/pi/"venv"/bin/edgekit', "run"], "pi", "/home/pi", "cannot start a program whose path contains"),
        (["/home/pi/$venv/bin/edgekit", "run"], "pi", "/home/pi", "cannot start a program whose path contains"),
        ([], "pi", "/home/pi", "needs a command"),
        (COMMAND, "pi\nExecStartPre=/bin/sh", "/home/pi", "not a valid user name"),
        (COMMAND, "", "/home/pi", "not a valid user name"),
        (COMMAND, "pi", "relative/dir", "working directory must be an absolute path"),
        (COMMAND, "pi", "/home/pi\nUser=root", "cannot contain control characters"),
        ([COMMAND[0], "nul\0byte"], "pi", "/home/pi", "NUL"),
    ],
    ids=[
        "relative-executable",
        "quote-in-executable",
        "dollar-in-executable",
        "empty-command",
        "user-with-newline",
        "empty-user",
        "relative-working-directory",
        "newline-in-working-directory",
        "nul-in-argument",
    ],
)
def test_bad_input_is_one_clear_error(command, user, working_directory, match):
    with pytest.raises(EdgekitError, match=match):
        systemd_unit(command, user=user, working_directory=working_directory)


def test_description_and_paths_keep_percent_signs():
    unit = parse_unit(
        systemd_unit(
            ["/opt/cam 100%/bin/edgekit", "run"],
            user="pi",
            working_directory="/srv/line 5%",
            description="line 5% camera",
        )
    )
    assert unit["Unit"]["Description"] == "line 5%% camera"
    assert unit["Service"]["WorkingDirectory"] == "/srv/line 5%%"
    assert systemd_words(unit["Service"]["ExecStart"]) == ["/opt/cam 100%/bin/edgekit", "run"]


def test_a_secret_goes_in_an_environment_file_not_on_the_command_line():
    unit = parse_unit(
        systemd_unit(COMMAND, user="pi", working_directory="/home/pi", environment_file="/etc/edgekit/edgekit.env")
    )
    assert unit["Service"]["EnvironmentFile"] == "/etc/edgekit/edgekit.env"
    assert "EnvironmentFile" not in parse_unit(systemd_unit(COMMAND, user="pi", working_directory="/"))["Service"]
    with pytest.raises(EdgekitError, match="environment file must be an absolute path"):
        systemd_unit(COMMAND, user="pi", working_directory="/home/pi", environment_file="edgekit.env")


def _verify(unit_text: str, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "edgekit.service"
    path.write_text(unit_text)
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60)


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path):
    # verify checks that the executable exists; put it where the path needs quoting
    program = tmp_path / "venv 100% here" / "bin" / "edgekit"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    text = systemd_unit(
        [str(program), "run", *TRICKY],
        user="edgekit-camera",
        working_directory=str(tmp_path),
        environment_file=str(tmp_path / "edgekit.env"),
    )
    done = _verify(text, tmp_path)
    assert done.returncode == 0 and done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr


@needs_systemd_analyze
@pytest.mark.parametrize(
    "name", ["with space", "100%", "%n", 'say "hi"', "back\\slash", "it's", "ü", "semi;", "tab\there"]
)
def test_systemd_reads_a_quoted_word_back_as_written(tmp_path, name):
    # systemd names the executable it parsed in its complaint about it: the round trip, by systemd itself
    # ("$" is left out: systemd never expands variables in the executable, only in the arguments)
    path = f"/nonexistent/{name}"
    done = _verify(f"[Service]\nUser=edgekit-camera\nExecStart={quote_argument(path)}\n", tmp_path)
    complaints = (f"Command {path} is not executable", f"Executable name contains special characters: {path}\n")
    assert any(complaint in done.stderr + "\n" for complaint in complaints), done.stderr
