"""report.html: every section from a synthetic run folder, escaping, absence, the CLI verb,
and (marked ``browser``) the page rendered by headless Chromium with a screenshot."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from tunelab.cli.main import app
from tunelab.config import load_config
from tunelab.errors import TunelabError
from tunelab.recipes.run import run_pipeline
from tunelab.report import build_report, compare_chart, loss_curves, reliability_diagram
from tunelab.report.plots import generation_metric_keys
from tunelab.report.sections import SECTIONS
from tunelab.results import Calibration, CompareTable

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
XSS = "<script>alert(1)</script>"
runner = CliRunner()


def _bins(shift: float) -> list[dict]:
    """15 reliability bins; accuracy = confidence - shift (an over-confident model)."""
    bins = []
    for i in range(15):
        lo, hi = i / 15, (i + 1) / 15
        empty = i < 7  # low-confidence bins of a binary task stay empty
        conf = (lo + hi) / 2
        bins.append(
            {
                "lo": lo,
                "hi": hi,
                "count": 0 if empty else 20 + i,
                "confidence": None if empty else conf,
                "accuracy": None if empty else max(0.0, conf - shift),
            }
        )
    return bins


def _results() -> dict:
    """Every key the report reads, in the layout of runs/<name>/results.json."""
    metrics = lambda acc, f1: {  # noqa: E731
        "accuracy": acc,
        "f1_macro": f1,
        "f1_micro": acc,
        "per_class": {
            "pos": {"precision": acc, "recall": acc, "f1": f1, "support": 52},
            "neg": {"precision": acc, "recall": acc, "f1": f1, "support": 48},
        },
        "confusion_matrix": {"labels": ["neg", "pos"], "matrix": [[40, 8], [6, 46]]},
    }
    ci = lambda acc, f1: {"accuracy": [acc - 0.05, acc + 0.04], "f1_macro": [f1 - 0.06, f1 + 0.05]}  # noqa: E731
    samples = [
        {
            "prompt": f"Review: {XSS} a fine film",
            "prediction": "pos",
            "reference": "pos",
            "confidence": 0.91,
        },
        {
            "prompt": "Review: dull & <b>boring</b>",
            "prediction": "pos",
            "reference": "neg",
            "confidence": 0.62,
            "correct": False,
        },
        {"prompt": "Review: superb\nsecond line", "prediction": "pos", "reference": "pos"},
    ]
    calib = {"ece": 0.12, "brier": 0.21, "nll": 0.61, "accuracy": 0.86, "mean_confidence": 0.97}
    after = {"ece": 0.03, "brier": 0.18, "nll": 0.41, "accuracy": 0.86, "mean_confidence": 0.88}
    row = lambda name, model, shots, sel, acc, tokens, ms: {  # noqa: E731
        "name": name,
        "model": model,
        "shots": shots,
        "selection": sel,
        "n": 100,
        "metrics": {"accuracy": acc, "f1_macro": acc - 0.02},
        "ci95": ci(acc, acc - 0.02),
        "prompt_tokens": tokens,
        "latency_ms": ms,
    }
    return {
        "tunelab_version": "0.1.0",
        "run": "synthetic <run>",
        "model": {"base": "tiny-llama", "source": "local:/models/tiny"},
        "method": {"kind": "lora", "head": "lm"},
        "data": {
            "format": "classification",
            "format_note": "format 'classification' from reviews.jsonl: 130 rows",
            "split_method": "stratified, val 0.1, test 0.1, seed 0",
            "hash": "ea0b93809e181776",
            "labels": ["neg", "pos"],
            "pii": {"policy": "redact", "found": {"email": 2}, "note": "names: not detected"},
            "tasks": {
                "data": {
                    "format": "classification",
                    "rows_in": 130,
                    "kept": 120,
                    "dropped": {"dedupe: exact duplicate": 7, "validation: empty": 3},
                    "recipe_dropped": {},
                    "splits": {"train": 96, "val": 12, "test": 12},
                }
            },
            "rows_in": 130,
            "rows_kept": 120,
            "splits": {"train": 96, "val": 12, "test": 12},
            "warnings": ["label 'pos' is 60% of train"],
            "label_balance": {"train": {"neg": 40, "pos": 56}, "test": {"neg": 5, "pos": 7}},
        },
        "environment": {"torch": "2.13.0+cpu", "device": "cpu", "precision": "fp32"},
        "base": {
            "n": 100,
            "metrics": metrics(0.57, 0.36),
            "ci95": ci(0.57, 0.36),
            "seconds": 3.2,
            "samples": samples[:1],
        },
        "tuned": {
            "n": 100,
            "metrics": metrics(0.86, 0.85),
            "ci95": ci(0.86, 0.85),
            "seconds": 3.4,
            "samples": samples,
        },
        "trainable_params": 1953792,
        "total_params": 136468800,
        "training": {
            "steps": 80,
            "stopped": "early_stopping",
            "best_step": 40,
            "best_val_loss": 0.19,
            "tokens": 101310,
            "seconds": 500.1,
            "tokens_per_second": 202.6,
        },
        "compare": {
            "primary": "accuracy",
            "rows": [
                row("base 0-shot", "base", 0, None, 0.57, 41.2, 95.1),
                row("base 4-shot", "base", 4, "random", 0.62, 210.4, 180.0),
                row("fine-tuned", "tuned", 0, None, 0.86, 41.2, 96.0),
            ],
            "conclusion": "fine-tuned beats base 4-shot by 24.0 points of accuracy "
            "with 5.1x fewer prompt tokens",
        },
        "forgetting": {
            "retention_score": 0.866,
            "retention_ci95": [0.836, 0.876],
            "n_probes_in_score": 2,
            "notes": ["qa_match: few items"],
            "probes": {
                "prose_ppl": {
                    "metric": "nll",
                    "description": "NLL/token of prose",
                    "higher_is_better": False,
                    "base": 3.46,
                    "tuned": 3.45,
                    "delta": -0.01,
                    "ci95": [-0.03, 0.01],
                    "significant": False,
                    "retention": 1.01,
                    "retention_ci95": [0.99, 1.03],
                },
                "qa_match": {
                    "metric": "match_f1",
                    "description": "token F1 of answers",
                    "higher_is_better": True,
                    "base": 0.076,
                    "tuned": 0.05,
                    "delta": -0.026,
                    "ci95": [-0.05, -0.01],
                    "significant": True,
                    "retention": 0.66,
                    "retention_ci95": [0.5, 0.8],
                },
            },
        },
        "calibration": {
            "temperature": 1.7,
            "bins": 15,
            "n_fit": 128,
            "n_test": 100,
            "before": calib,
            "after": after,
            "reliability": {"before": _bins(0.12), "after": _bins(0.02)},
        },
        "wall_seconds": 709.3,
        "peak_rss_mb": 2341.1,
    }


def _records() -> list[dict]:
    """metrics.jsonl: train logs every 10 steps, validation (loss, then generation metrics)
    every 40, and a half-written last line as a running job leaves it."""
    rows: list[dict] = []
    for step in range(10, 81, 10):
        rows.append(
            {
                "step": step,
                "epoch": step / 640,
                "loss": 0.4 / (1 + step / 20),
                "lr": 5e-4,
                "grad_norm": 1.0,
                "tokens": step * 1200,
                "elapsed": step * 6.0,
            }
        )
        if step % 40 == 0:
            rows.append({"step": step, "val_loss": 0.19 if step == 40 else 0.2, "best_val": 0.19})
            rows.append({"step": step, "val_accuracy": 0.8 + step / 1000, "val_rougeL": 0.5})
    return rows


def _write_run(folder: Path, results: dict, *, with_logs: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    if with_logs:
        lines = [json.dumps(r) for r in _records()] + ['{"step": 90, "lo']
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        config = {
            "name": "synthetic",
            "model": {"base": "tiny-llama"},
            "method": {"kind": "lora", "head": "lm"},
            "train": {"lr": 5e-4, "max_steps": 80, "batch_size": 16, "seed": 0},
            "note": XSS,
        }
        (folder / "config.resolved.yaml").write_text(yaml.safe_dump(config))
        val = [
            {"step": s, "prompt": f"val prompt {s}", "prediction": "pos", "reference": "neg"}
            for s in (40, 80)
        ]
        (folder / "val_samples.jsonl").write_text("".join(json.dumps(v) + "\n" for v in val))
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "runs" / "synthetic", _results())


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_has_every_section_with_inline_images(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.html" and path.is_file()
    page = path.read_text()
    for anchor, title in SECTIONS:
        assert f'<section id="{anchor}">\n<h2>{title}</h2>' in page, title
    assert "not measured in this run" not in page  # every section has its data
    images = _images(page)
    assert len(images) == 3  # loss curves, compare chart, reliability diagram
    assert all(png.startswith(PNG_MAGIC) for png in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained: no external URL
    assert "<script" not in page
    for text in [
        "early_stopping",
        "fine-tuned beats base 4-shot by 24.0 points",
        "[0.810, 0.900]",
        "+0.290",
        "1.7",
        "dedupe: exact duplicate",
        "retention score (95% CI)",
        "0.866 [0.836, 0.876]",
        "validation generations at step 80",
        "1,953,792 of 136,468,800 (1.43%)",
        "11 min 49 s",
    ]:
        assert text in page, text
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # tmp replaced


def test_user_text_is_escaped(run_dir):
    page = build_report(run_dir).read_text()
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # prompt and config both
    assert "dull &amp; &lt;b&gt;boring&lt;/b&gt;" in page
    assert "<title>tunelab report: synthetic &lt;run&gt;</title>" in page


def test_correct_and_wrong_predictions_are_split(run_dir):
    page = build_report(run_dir).read_text()
    correct = page[page.index('class="samples correct"') : page.index('class="samples wrong"')]
    wrong = page[page.index('class="samples wrong"') :]
    assert "superb" in correct and "a fine film" in correct  # no flag: prediction == reference
    assert "boring" in wrong and "boring" not in correct  # "correct": false wins


@pytest.mark.parametrize("results", [{}, {"run": "mini", "tunelab_version": "0.1.0"}])
def test_minimal_results_still_render(tmp_path, results):
    folder = _write_run(tmp_path / "mini", results, with_logs=False)
    page = build_report(folder).read_text()
    for anchor, title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, anchor
    # every section but the header says what is missing
    assert page.count("not measured in this run") == len(SECTIONS) - 1
    assert _images(page) == []


def test_partial_results_render_what_is_there(tmp_path):
    results = _results()
    del results["base"], results["calibration"]["reliability"], results["compare"]
    folder = _write_run(tmp_path / "partial", results, with_logs=False)
    page = build_report(folder).read_text()
    assert "no base evaluation" in page and "no reliability bins" in page
    assert "no loss curve" in page and "run `tunelab compare`" in page
    assert "0.860" in page  # the fine-tuned metrics are still there


def test_missing_or_broken_results_is_a_clear_error(tmp_path):
    with pytest.raises(TunelabError, match=r"no results\.json") as info:
        build_report(tmp_path)
    assert "tunelab run CONFIG" in (info.value.hint or "")
    (tmp_path / "results.json").write_text("[1, 2")
    with pytest.raises(TunelabError, match="not valid JSON"):
        build_report(tmp_path)


def test_plots_are_pngs_and_leave_no_open_figure():
    import matplotlib.pyplot as plt

    calibration = Calibration.model_validate(_results()["calibration"])
    pngs = [
        loss_curves(_records()),
        loss_curves([r for r in _records() if "val_accuracy" not in r], best_step=40),
        loss_curves([]),
        reliability_diagram(calibration),
        reliability_diagram(calibration.model_copy(update={"reliability": None})),
        compare_chart(CompareTable.model_validate(_results()["compare"])),
        compare_chart(CompareTable(primary="accuracy", rows=[])),
    ]
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    # a second panel for generation metrics makes the figure taller (8x6.8 vs 8x3.4 inches)
    assert _png_size(pngs[0])[1] > 1.5 * _png_size(pngs[1])[1]
    assert plt.get_fignums() == []


def _png_size(png: bytes) -> tuple[int, int]:
    # IHDR: width and height are the big-endian uint32s at bytes 16..24 (PNG spec, 11.2.2)
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_cli_report_regenerates_from_a_folder_or_a_config(run_dir, tmp_path):
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert str(run_dir / "report.html") in result.output
    (run_dir / "report.html").unlink()

    config = tmp_path / "synthetic.yaml"
    config.write_text(yaml.safe_dump({"name": "synthetic", "output_dir": str(run_dir.parent)}))
    result = runner.invoke(app, ["report", str(config)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()


def test_cli_report_without_results_names_the_fix(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert isinstance(result.exception, TunelabError)
    assert "run `tunelab run CONFIG` first" in str(result.exception)


# ---------------------------------------------------------------------------------------------
# the browser test: the page as Chromium renders it


def _chrome_or_skip() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(
        n for n, p in [("chromium", chromium), ("chromedriver", driver)] if not p
    )
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{missing} not installed; in CI the test command (`make test`) should have "
            "installed them via scripts/setup-browser.sh"
        )
    pytest.skip(f"{missing} not installed (run `sudo bash scripts/setup-browser.sh`)")


def _check_in_chromium(page: Path, title: str, images: int, screenshot: str) -> str:
    """Open ``page`` in headless Chromium; check the title, that ``images`` images load, that
    every section heading shows and the console has no error; save a full-page screenshot.
    Returns the predictions section's text."""
    chromium, driver_path = _chrome_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ]:
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    started = time.perf_counter()
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(page.as_uri())
        assert driver.title == title
        loaded = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
        )
        assert len(loaded) == images and all(ok for _alt, ok in loaded), loaded
        for anchor, heading_text in SECTIONS:
            heading = driver.find_element(By.CSS_SELECTOR, f"#{anchor} h2")
            assert heading.is_displayed() and heading.text == heading_text
        predictions = str(driver.find_element(By.ID, "predictions").text)
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == [], severe

        # the whole page in one image: a viewport as tall as the page, captured through the
        # DevTools protocol (a window that tall is capped by the headless screen size)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = ROOT / ".artifacts" / screenshot
        shot.parent.mkdir(exist_ok=True)
        capture = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        shot.write_bytes(base64.b64decode(capture["data"]))
        assert shot.read_bytes().startswith(PNG_MAGIC)
        assert _png_size(shot.read_bytes())[1] >= height
    finally:
        driver.quit()
    print(f"browser check took {time.perf_counter() - started:.1f} s; screenshot: {shot}")
    return predictions


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir, monkeypatch):
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never go to the network
    page = build_report(run_dir)
    text = _check_in_chromium(page, "tunelab report: synthetic <run>", 3, "report.png")
    assert XSS in text  # the escaped prompt is shown as text, not run


@pytest.mark.browser
def test_a_real_runs_report_renders_in_headless_chromium(
    tmp_path, tiny_model_dir, sentiment_file, monkeypatch
):
    """The report `tunelab run` itself writes (tiny model, every stage on) renders too."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    cfg = tiny_config(tiny_model_dir, sentiment_file, tmp_path / "runs",
                      compare={"shots": [2], "latency_requests": 1},
                      forgetting={"max_examples": 8})  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_pipeline(load_config(path, []))
    parts = (results.compare, results.calibration, results.forgetting, results.training)
    assert all(part is not None for part in parts)
    page = tmp_path / "runs" / "tiny" / "report.html"
    text = _check_in_chromium(page, "tunelab report: tiny", 3, "report-tiny-run.png")
    assert "correct" in text or "wrong" in text


def test_only_task_metrics_are_drawn_as_generation_metrics():
    records = [{"step": 4, "val_loss": 1.0, "val_seconds": 5.1, "val_accuracy": 0.5},
               {"step": 8, "val_rougeL": 0.3, "loss": 2.0}]  # fmt: skip
    assert generation_metric_keys(records) == ["val_accuracy", "val_rougeL"]
