"""``fedpress report``: one self-contained HTML page over real (tiny) runs, checked as data and
in a real headless browser (Debian's Chromium) when one is installed."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedpress import cli
from fedpress.metrics.report import write_report

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quick_digits.yaml"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TAB_BLUE, TAB_ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real runs of the tiny digits config: FedAvg uncompressed, FedBuff with `linear`."""
    from fedpress.experiment.run import run_experiment

    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, overrides in (
        ("avg-none", ["strategy.name=fedavg", "codec.name=none"]),
        ("buff-linear", ["strategy.name=fedbuff", "codec.name=linear", "codec.eb=0.01"]),
    ):
        run_experiment(CONFIG, [*overrides, "run.max_updates=10", "run.plots=false"],
                       run_dir=root / name)
        out.append(root / name)
    return out


@pytest.fixture(scope="module")
def report(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report over both runs, rendered once for the checks below (figures cost seconds)."""
    return write_report(runs, tmp_path_factory.mktemp("report") / "report.html",
                        title="two <runs>")


def _last_eval(run_dir: Path) -> dict:
    evals = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
             if '"event":"eval"' in line]
    return evals[-1]


def _data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_page_is_self_contained_with_every_plot(runs: list[Path], report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>two &lt;runs&gt;</title>" in page
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), "external asset"
    assert "<script" not in page
    pngs = _data_uris(page)
    assert len(pngs) == 1 + 3 * len(runs)  # comparison + accuracy/bytes/staleness per run
    import matplotlib.image as mpimg

    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.05


def test_page_shows_each_runs_numbers_and_config(runs: list[Path], report: Path) -> None:
    page = html.unescape(report.read_text(encoding="utf-8"))
    for run in runs:
        last = _last_eval(run)
        assert f"{last['accuracy']:.4f}" in page  # final accuracy, straight from the log
        assert (run / "config.yaml").read_text() in page  # the resolved config, verbatim
    assert "fedavg, uncompressed" in page and "fedbuff, linear REL 0.01" in page
    up = sum(json.loads(line).get("bytes_up", 0)
             for line in (runs[1] / "events.jsonl").read_text().splitlines()
             if '"event":"arrival"' in line)
    assert f"{up / 1e6:.2f}" in page


def test_bad_run_dir_writes_nothing(runs: list[Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    code = cli.main(["report", str(runs[0]), str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "not a run directory" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_writes_the_report(runs: list[Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "report.html"
    assert cli.main(["report", str(runs[1]), "--out", str(out), "--title", "one run"]) == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    assert len(_data_uris(page)) == 4 and "<h1>one run</h1>" in page


# ------------------------------------------------------------------------ real browser


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def _load_in_browser(page: Path, tmp: Path, size: str = "1280,2400") -> tuple[str, str, Path]:
    """Load ``page`` in headless Chromium: (DOM after load, browser log, screenshot path)."""
    shot = tmp / f"{page.stem}.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr",
           "--v=0", f"--window-size={size}", f"--screenshot={shot}", "--dump-dom",
           page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout, res.stderr, shot


def page_errors(log: str) -> list[str]:
    """Browser log lines that report a problem with the page (console output, JS errors,
    failed loads); Chromium's own noise about D-Bus, GPU or sandbox is ignored."""
    bad = re.compile(r":CONSOLE[:(]|Uncaught|Failed to load resource|net::ERR_")
    return [line for line in log.splitlines() if bad.search(line)]


def _colour_pixels(png: Path, rgb: tuple[int, int, int]) -> int:
    import matplotlib.image as mpimg

    img = (mpimg.imread(png)[..., :3] * 255).round().astype(int)
    return int((np.abs(img - np.array(rgb)).max(axis=-1) <= 12).sum())


needs_browser = pytest.mark.skipif(
    _browser() is None,
    reason="no Chromium for the headless-browser check (apt-get install -y chromium; .ci/run "
           "installs it when run as root)")


@needs_browser
def test_browser_error_scan_catches_a_broken_page(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>console.error("boom");'
                   "nosuchfn();</script></body></html>")
    _, log, _ = _load_in_browser(bad, tmp_path, "400,300")
    errors = page_errors(log)
    assert any("boom" in e for e in errors) and any("nosuchfn" in e for e in errors)


@needs_browser
def test_report_in_a_real_browser(report: Path, tmp_path: Path) -> None:
    dom, log, shot = _load_in_browser(report, tmp_path)
    assert page_errors(log) == []
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) == 7
    assert "Runs side by side" in dom
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1280)
    assert float(img.std()) > 0.05  # not a blank page
    # the plots were drawn: many pixels in matplotlib's two line colours (text is grey/black)
    assert _colour_pixels(shot, TAB_BLUE) > 2000 and _colour_pixels(shot, TAB_ORANGE) > 300
