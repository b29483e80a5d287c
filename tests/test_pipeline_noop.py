"""A pipeline run with nothing stale does nothing: no report rendered again, no Keras, no scikit-learn imported;
and anything that makes the report stale (an edited report file, changed settings) makes it run again."""

import json
import subprocess
import sys

import pytest

from featcache.pipeline import run

from conftest import REPO, TINY_PIPE, run_here

PIPE = TINY_PIPE + """[bench]
heads = {heads}
baseline_heads = []
n_jobs = 1
"""


def _write(tmp_path, source, heads=("logreg",)):
    d = tmp_path / "pipelines"
    d.mkdir(exist_ok=True)
    path = d / "p.toml"
    path.write_text(PIPE.format(source=source, heads=json.dumps(list(heads))))
    return path


def _report_state(report):
    return {p.relative_to(report): (p.read_bytes(), p.stat().st_mtime_ns) for p in report.rglob("*") if p.is_file()}


def _run_in_fresh_process(path) -> tuple[str, list[str]]:
    """Run the pipeline in a new interpreter; returns what it said and which heavy modules it imported."""
    code = ("import sys; from featcache.pipeline import run; run(sys.argv[1], progress=False); "
            "print(sorted(m for m in ('keras', 'tensorflow', 'sklearn', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr, json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_a_second_run_with_nothing_stale_renders_nothing_and_imports_no_keras_or_sklearn(tmp_path, photo_folder):
    path = _write(tmp_path, photo_folder / "train")
    run(path, progress=False)
    report = tmp_path / "out" / "t" / "report"
    before = _report_state(report)
    assert (report / "report.html").is_file() and (tmp_path / "out" / "t" / "report.bench.json").is_file()
    said, imported = _run_in_fresh_process(path)
    assert "report.html: up to date" in said
    assert imported == []  # the no-op path never loads Keras, TensorFlow, scikit-learn or matplotlib
    assert _report_state(report) == before  # not one file rewritten


def test_an_edited_report_file_or_changed_bench_settings_run_bench_again(tmp_path, photo_folder):
    path = _write(tmp_path, photo_folder / "train")
    run(path, progress=False)
    report = tmp_path / "out" / "t" / "report"
    rendered = (report / "report.md").read_bytes()
    (report / "report.md").write_bytes(rendered + b"\nan edit the stamp does not describe\n")
    said, _ = _run_in_fresh_process(path)
    assert "report.html: up to date" not in said
    assert (report / "report.md").read_bytes() == rendered  # bench wrote its own report again
    said, _ = _run_in_fresh_process(_write(tmp_path, photo_folder / "train", heads=("logreg", "lda")))
    assert "report.html: up to date" not in said
    rows = json.loads((report / "results.json").read_text())
    assert sorted(r["head"] for r in rows) == ["lda", "logreg"]


def test_a_foreign_file_where_the_bench_stamp_goes_is_refused_before_any_work(tmp_path, photo_folder):
    path = _write(tmp_path, photo_folder / "train")
    out = tmp_path / "out" / "t"
    out.mkdir(parents=True)
    mine = b'{"format": "featcache-pipeline-bench/1", "note": "the user\'s own file"}\n'
    (out / "report.bench.json").write_bytes(mine)
    proc = run_here("run", path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "report.bench.json" in proc.stderr.replace("\n", "") and "did not write it" in proc.stderr
    assert (out / "report.bench.json").read_bytes() == mine
    assert sorted(p.name for p in out.iterdir()) == ["report.bench.json"]  # no cache begun


@pytest.mark.slow
def test_a_second_run_of_a_limited_source_imports_no_scikit_learn(tmp_path, photo_folder):
    # limit draws a stratified sample on every run, the no-op included: it must not need scikit-learn
    path = _write(tmp_path, photo_folder / "train")
    path.write_text(path.read_text().replace('[data]\n', '[data]\nlimit = 10\n').split("[bench]")[0])
    run(path, progress=False)
    said, imported = _run_in_fresh_process(path)
    assert "up to date, nothing extracted" in said and "(10 rows;" in said
    assert imported == []
