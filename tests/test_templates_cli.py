"""The ``templates`` CLI contract: header ``line,template_id,template``, 1-based lines, CSV quoting."""

import argparse
import csv
import subprocess
import sys

from detector.logs import templates_cli


def run_cli(tmp_path, data: bytes, *extra):
    src = tmp_path / "in.log"
    src.write_bytes(data)
    out = tmp_path / "out.csv"
    rc = templates_cli.main(["--input", str(src), "--output", str(out), *extra])
    return rc, out


def test_header_line_numbers_and_templates(tmp_path):
    rc, out = run_cli(
        tmp_path,
        b"Failed password for root from 10.0.0.1 port 22 ssh2\n"
        b"Started Session 7 of user root.\n"
        b"Failed password for root from 10.0.0.2 port 2222 ssh2\n",
    )
    assert rc == 0
    assert out.read_text(encoding="utf-8") == (
        "line,template_id,template\n"
        "1,T1,Failed password for root from <*> port <*> ssh2\n"
        "2,T2,Started Session <*> of user root.\n"
        "3,T1,Failed password for root from <*> port <*> ssh2\n"
    )


def test_commas_and_quotes_are_csv_quoted(tmp_path):
    rc, out = run_cli(tmp_path, b'open "a,b" failed, code 5\n')
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[1] == '1,T1,"open ""a,b"" failed, code <*>"'
    rows = list(csv.reader(text.splitlines()))
    assert rows[1] == ["1", "T1", 'open "a,b" failed, code <*>']


def test_lines_get_their_final_template(tmp_path):
    # the first three users are three templates until the fourth makes the slot a variable:
    # every line then reports the merged template
    data = b"".join(f"Invalid user {u} from 10.0.0.{i}\n".encode() for i, u in enumerate("abcd"))
    rc, out = run_cli(tmp_path, data)
    assert rc == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["line"], r["template_id"], r["template"]) for r in rows] == [
        (str(i), "T1", "Invalid user <*> from <*>") for i in range(1, 5)
    ]


def test_invalid_utf8_crlf_and_empty_lines(tmp_path):
    rc, out = run_cli(tmp_path, b"caf\xc3\xa9 ready 1\r\n\xff\xfe broken 2\r\n\nlast line without newline 3")
    assert rc == 0
    rows = list(csv.reader(out.read_text(encoding="utf-8").splitlines()))
    assert rows == [
        ["line", "template_id", "template"],
        ["1", "T1", "café ready <*>"],
        ["2", "T2", "\ufffd\ufffd broken <*>"],
        ["3", "T3", ""],
        ["4", "T4", "last line without newline <*>"],
    ]


def test_a_carriage_return_inside_a_line_does_not_split_it(tmp_path):
    rc, out = run_cli(tmp_path, b"progress 10%\rprogress 20%\nnext\n")
    assert rc == 0
    assert [r[0] for r in csv.reader(out.read_text(encoding="utf-8").splitlines())] == ["line", "1", "2"]


def test_empty_input_writes_only_the_header(tmp_path):
    rc, out = run_cli(tmp_path, b"")
    assert rc == 0
    assert out.read_text(encoding="utf-8") == "line,template_id,template\n"


def test_state_file_keeps_ids_across_runs(tmp_path):
    state = tmp_path / "state.json"
    rc, _ = run_cli(tmp_path, b"disk full on /dev/sda1\nGPU 0 fell off the bus\n", "--state", str(state))
    assert rc == 0 and state.is_file()
    rc, out = run_cli(tmp_path, b"GPU 1 fell off the bus\nfan 2 stopped\n", "--state", str(state))
    assert rc == 0
    assert out.read_text(encoding="utf-8") == (
        "line,template_id,template\n1,T2,GPU <*> fell off the bus\n2,T3,fan <*> stopped\n"
    )


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "out.csv"
    rc = templates_cli.main(["--input", str(tmp_path / "nope.log"), "--output", str(out)])
    assert rc == 2
    assert "--input" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_state_is_a_clear_error(tmp_path, capsys):
    state = tmp_path / "state.json"
    state.write_text("garbage")
    rc, out = run_cli(tmp_path, b"x 1\n", "--state", str(state))
    assert rc == 2
    assert "--state" in capsys.readouterr().err
    assert state.read_text() == "garbage"  # the user's file is left for them to inspect


def test_add_parser_registers_the_subcommand(tmp_path):
    parser = argparse.ArgumentParser(prog="rigwatch-detector")
    templates_cli.add_parser(parser.add_subparsers(dest="command"))
    src = tmp_path / "in.log"
    src.write_text("hello 1\n", encoding="utf-8")
    args = parser.parse_args(["templates", "--input", str(src), "--output", str(tmp_path / "o.csv")])
    assert args.func is templates_cli.run
    assert args.func(args) == 0
    assert (tmp_path / "o.csv").read_text(encoding="utf-8") == "line,template_id,template\n1,T1,hello <*>\n"


def test_runs_as_a_module(tmp_path):
    src = tmp_path / "in.log"
    src.write_bytes(b"worker 3 started\n")
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-m", "detector.logs.templates_cli", "--input", str(src), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == "line,template_id,template\n1,T1,worker <*> started\n"


def test_control_characters_and_unicode_separators_stay_in_their_line(tmp_path):
    rc, out = run_cli(tmp_path, "a\x00b 1\nline\u2028sep 2\x0bz\n".encode())
    assert rc == 0
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["line", "template_id", "template"],
        ["1", "T1", "a\x00b <*>"],
        ["2", "T2", "line sep <*> z"],  # \u2028 and \x0b split tokens, not lines
    ]
