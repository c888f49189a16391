"""contrib/: the systemd unit passes `systemd-analyze verify` and the Dockerfile is a sound recipe."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
# Keys newer than some systemd still in service (254+): older ones ignore them with this warning.
NEWER_KEYS = ("RestartSteps", "RestartMaxDelaySec")


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values, as systemd reads them (comments only on lines of their own)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key, []).append(value)
    return sections


def test_unit_has_the_hardening_and_state_layout():
    unit = unit_settings((CONTRIB / "recorder.service").read_text())
    service = unit["Service"]
    assert service["StateDirectory"] == ["recorder"]
    assert service["WorkingDirectory"] == ["/var/lib/recorder"]
    assert service["DynamicUser"] == ["yes"]
    for key, value in {"NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectSystem": "strict",
                       "Restart": "on-failure", "RestartPreventExitStatus": "2"}.items():
        assert service[key] == [value], key
    # The database and the spool are in the one writable place.
    assert "RECORDER_DATABASE_URL=sqlite:////var/lib/recorder/recorder.db" in service["Environment"]
    assert "RECORDER_SPOOL_DIR=/var/lib/recorder/spool" in service["Environment"]
    assert "ReadWritePaths" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    for values in service.values():
        for value in values:
            assert "#" not in value, f"a comment inside a value: {value!r}"


def test_environment_file_has_no_comment_after_a_value():
    for line in (CONTRIB / "recorder.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.fullmatch(r"[A-Z_]+=[^#\s]*", line), line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify needs ExecStart's binary to exist: this test environment's recorder stands in for /opt's.
    recorder = Path(sys.executable).parent / "recorder"
    assert recorder.is_file()
    text = (CONTRIB / "recorder.service").read_text().replace("/opt/recorder/bin/recorder", str(recorder))
    unit = tmp_path / "recorder.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        line for line in (result.stdout + result.stderr).splitlines()
        if str(unit) in line and not any(f"Unknown key '{key}'" in line for key in NEWER_KEYS)
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


INSTRUCTIONS = {"FROM", "ENV", "COPY", "RUN", "VOLUME", "WORKDIR", "USER", "HEALTHCHECK", "STOPSIGNAL",
                "ENTRYPOINT", "CMD", "ARG", "LABEL", "EXPOSE"}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        found.append((keyword, arguments.strip()))
    assert not pending, "the file ends inside a continued line"
    return found


def test_dockerfile_parses_and_runs_as_a_non_root_user_with_data_on_a_volume():
    steps = dockerfile_instructions((CONTRIB / "Dockerfile").read_text())
    assert all(keyword in INSTRUCTIONS for keyword, _ in steps), steps
    assert steps[0] == ("FROM", "python:3.11-slim")
    values = {keyword: arguments for keyword, arguments in steps}
    assert values["USER"] not in ("root", "0")
    assert values["VOLUME"] == '["/data"]'
    assert "RECORDER_DATABASE_URL=sqlite:////data/recorder.db" in values["ENV"] or any(
        "RECORDER_DATABASE_URL=sqlite:////data/recorder.db" in a for k, a in steps if k == "ENV")
    assert values["HEALTHCHECK"].endswith('CMD ["recorder", "status"]')
    assert values["ENTRYPOINT"] == '["recorder"]' and values["CMD"] == '["run"]'
    install = next(a for k, a in steps if k == "RUN" and "pip install" in a)
    assert "useradd" in install
    # USER comes after the install (pip needs root) and before the command.
    order = [keyword for keyword, _ in steps]
    assert order.index("RUN") < order.index("USER") < order.index("ENTRYPOINT")
