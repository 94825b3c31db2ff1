"""Both launchers fail the same way, through their one main (flake_pilot.launch.main): any failure
of their own, a bug included, is one line on stderr naming the app and exit status 125;
PILOT_DEBUG=1 adds the traceback; an interrupt of their own work is one line and 128+N. A bug
cannot be provoked through real input (that would be fixed), so each case replaces the
launcher's ``launch`` with a function raising it, in a real launcher process."""

from __future__ import annotations

import subprocess
import sys

import pytest

LAUNCHERS = {
    "podman": "import sys; from flake_pilot.launch.podman import pilot as m; sys.argv = ['/x/myapp']\n"
    "m.launch = fail\nsys.exit(m.main())",
    "firecracker": "from flake_pilot.launch.firecracker import pilot as m\nm.launch = fail\nm.main(['/x/myapp'])",
}
FAULTS = {
    "bug": "raise RuntimeError('boom\\nsecond line')",
    "oserror": "raise FileNotFoundError(2, 'No such file or directory', '/var/x/state')",
    "flakeerror": "from flake_pilot.errors import ConfigError; raise ConfigError('/etc/x.yaml: key y: bad')",
}
EXPECTED = {
    "bug": "myapp: internal error: RuntimeError: boom second line (PILOT_DEBUG=1 shows more)",
    "oserror": "myapp: /var/x/state: No such file or directory",
    "flakeerror": "myapp: /etc/x.yaml: key y: bad",
}


def run(launcher: str, fault: str, debug: bool) -> subprocess.CompletedProcess:
    script = f"def fail(*args, **kw):\n    {FAULTS[fault]}\n{LAUNCHERS[launcher]}\n"
    env = {"PATH": "/usr/bin:/bin", **({"PILOT_DEBUG": "1"} if debug else {})}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_a_launcher_failure_is_one_line_and_125(launcher: str, fault: str) -> None:
    done = run(launcher, fault, debug=False)
    assert (done.returncode, done.stdout, done.stderr) == (125, "", EXPECTED[fault] + "\n")


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_debug_adds_the_traceback_and_keeps_125(launcher: str) -> None:
    done = run(launcher, "bug", debug=True)
    assert done.returncode == 125, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "RuntimeError: boom" in done.stderr
    assert done.stderr.splitlines()[-1] == "myapp: internal error: RuntimeError: boom second line"


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_an_interrupt_of_the_launchers_own_work_is_one_line_and_128_plus_n(launcher: str) -> None:
    script = f"def fail(*args, **kw):\n    raise KeyboardInterrupt\n{LAUNCHERS[launcher]}\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "myapp: interrupted\n")


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_the_launcher_called_by_its_own_name_says_how_to_use_it(launcher: str) -> None:
    name = f"{launcher}-pilot"
    script = LAUNCHERS[launcher].replace("/x/myapp", f"/usr/bin/{name}").replace("m.launch = fail\n", "")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    usage = f"{name}: call {name} through an app symlink (flake-ctl {launcher} register --app /usr/bin/NAME ...)\n"
    assert (done.returncode, done.stdout, done.stderr) == (125, "", usage)
