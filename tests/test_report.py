"""`lifelong report`: one self-contained HTML page with every figure, for a home with several versions."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from daemon.cli.report import FIGURES
from tests.conftest import cli
from tests.test_views import story  # noqa: F401  (the fixture: three versions, a rejection, a rollback)


def test_report_draws_every_figure(story: Path, tmp_path: Path) -> None:
    result = cli("report", "--home", str(story), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"report: {tmp_path / 'out' / 'report.html'}"
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    for key, title, _ in FIGURES:
        figure = re.search(rf"<figure id='{key}'>(.*?)</figure>", page, re.S)
        assert figure and title in figure.group(1), key
        image = re.search(r"src='data:image/png;base64,([^']+)'", figure.group(1))
        assert image, f"figure {key} has no image"
        png = base64.b64decode(image.group(1))
        assert png.startswith(b"\x89PNG") and len(png) > 5000, key
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched from anywhere
    versions = page.split("<section id='versions'>")[1].split("</section>")[0]
    assert "v0001 (champion)" in versions and "forgetting on batch 1: 0.583 &gt; 0.02" in versions
    assert "<tr class='rolled_back'><td>v0002" in versions
    audit = page.split("<section id='audit'>")[1]
    assert "<td>rollback</td><td>v0002</td><td>v0001</td><td>demo</td>" in audit


def test_report_of_a_home_without_versions(home_root: Path) -> None:
    result = cli("report", "--home", str(home_root))
    assert result.exit_code == 0, result.output
    page = (home_root / "report" / "report.html").read_text(encoding="utf-8")
    assert page.count("nothing to show yet") == len(FIGURES) and "No versions yet" in page
