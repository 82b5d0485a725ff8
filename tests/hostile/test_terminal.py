"""Text from files never reaches the terminal raw: control characters in a lock's contents, in a folder name
and in a report's keys are printed escaped (``\\x1b``), on stderr and on stdout."""

from __future__ import annotations

import fcntl
import json
import os

from hostile_helpers import refused, write_recipe

from distillprune.cli import main
from distillprune.errors import printable
from distillprune.report.report import CompressionReport, StageResult

ESC = "\x1b]0;owned\x07\x1b[2J\x1b[31m"


def test_printable_escapes_what_a_terminal_would_obey():
    assert printable(f"a{ESC}b\r\u202ez\tq") == "a\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mb\\r\\u202ez\\tq"
    assert printable("plain text, accents é and ü, 日本") == "plain text, accents é and ü, 日本"


def test_a_lock_holding_escape_sequences_is_quoted_escaped(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml")
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / "run.lock", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, json.dumps({"pid": ESC, "host": f"h{ESC}", "started": "now"}).encode())
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another run holds the folder
        line = refused(capsys, "run", recipe, "--out", out, match="in use by another run")
    finally:
        os.close(fd)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;owned\\x07" in line


def test_a_folder_name_with_escape_sequences_is_printed_escaped(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml")
    line = refused(capsys, "run", recipe, "--out", tmp_path / f"run{ESC}", "--resume", match="no run to resume")
    assert "\x1b" not in line and "\\x1b[31m" in line


def test_report_keys_with_escape_sequences_are_printed_escaped(tmp_path, capsys):
    rep = CompressionReport(f"recipe{ESC}", {})
    rep.add(StageResult(1, f"1:train{ESC}", "train", 1.0, accuracy=90.0, macs=10, flags=[f"flag{ESC}"]))
    rep.save(tmp_path / f"run{ESC}")
    capsys.readouterr()
    assert main(["report", str(tmp_path / f"run{ESC}")]) == 0  # the table, the flags, the files written
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\\x1b]0;owned") >= 3
