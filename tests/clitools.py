"""Helpers for tests that drive the CLI through :func:`airfoil.cli.main`."""

from airfoil.cli import main


def cli_ok(capsys, argv):
    """Run the CLI; assert exit status 0 and return what it printed on stdout."""
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def cli_fails(capsys, argv, message):
    """Run the CLI; assert one error line containing ``message``, no traceback, status 2."""
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (rc, cap.out, cap.err)
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("airfoil: error: ")
    assert message in lines[0], lines[0]
    assert "Traceback" not in cap.err
