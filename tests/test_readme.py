"""Every command in the README's tour runs, in order, as written."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, run_here


def _tour():
    text = (REPO / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    bash = next(body for lang, body in blocks if lang == "bash")
    python = next(body for lang, body in blocks if lang == "python")
    return [line.strip() for line in bash.splitlines() if line.strip()], python


def _setup_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", text, flags=re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_gives_exactly_two_setup_commands_that_the_makefile_and_ci_use():
    assert _setup_commands() == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: env\n\t\$\(BIN\)/featcache run pipelines/quickstart.toml", makefile, flags=re.M)
    # what the README's comments say of them: two workers, and a target that skips the slow tests
    assert re.search(r"^test: env\n\t\$\(BIN\)/python -m pytest -n 2 ", makefile, flags=re.M)
    assert re.search(r"^test-fast: env\n\t.*-m \"not slow\"", makefile, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_tour_commands_run_as_written(tmp_path, fashion_mnist_available):
    commands, python_block = _tour()
    assert len(commands) >= 5  # a few lines: every command once is docs/GUIDE.md's tour
    for name in ("data", "pipelines"):
        os.symlink(REPO / name, tmp_path / name)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FEATCACHE_HOME": str(tmp_path / "home")}
    for line in commands:
        words = line.split()
        if words[0] == "featcache":  # the entry point itself, in this process: a fresh one costs a TensorFlow import
            proc = run_here(*words[1:], cwd=tmp_path, env={"FEATCACHE_HOME": env["FEATCACHE_HOME"]}, check=False)
        elif words[0] == "python":
            proc = subprocess.run([sys.executable, *words[1:]], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
        else:
            pytest.fail(f"README tour has a command this test cannot run: {line}")
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "tour" / "report" / "report.html").is_file()
    assert (tmp_path / "tour" / "model.keras").is_file()
    assert (tmp_path / "tour" / "predictions.csv").read_text().count("\n") > 10
    assert "zoom" in (tmp_path / "tour" / "zoom-report" / "target_results.csv").read_text()
    proc = subprocess.run([sys.executable, "-c", python_block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
