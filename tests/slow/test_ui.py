"""The MLflow UI as a user sees it, in headless Chromium: two `dvc exp run -S` experiments on the
compare page, with the param that differs; the loss chart and an audio sample where the runs have
them. And `dvc plots show` / `dvc plots diff` for the plots dvc.yaml declares.

Screenshots go to the test's tmp dir; the compare page also to /tmp/mlflow_compare.png.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import run
from tests.slow.conftest import VENV_BIN, missing_browser, require

pytestmark = pytest.mark.slow

PARAM = "partition.max_segments"
VALUES = (2, 4)  # params.yaml has 5
LATEST_SCREENSHOT = Path("/tmp/mlflow_compare.png")
AUDIO_SUFFIXES = (".wav", ".flac")
WAIT_S = 90  # every wait on the browser or the server gives up after this
CHROMIUM_FLAGS = (  # no connection leaves the machine: background networking, sync, updates are off
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1600,1400", "--hide-scrollbars",
)


def exp_name(value: int) -> str:
    return f"segments-{value}"


@pytest.fixture(scope="module")
def ui_repo(team_repo, tmp_path_factory) -> Path:
    """A copy of the repo that ran the pipeline, plus two experiments with PARAM changed, tracked in
    the default SQLite store at the repo root (what `mlflow ui` shows a single user)."""
    repo = tmp_path_factory.mktemp("ui") / "repo"
    shutil.copytree(team_repo.path, repo, symlinks=True)
    for value in VALUES:
        out = run(["dvc", "exp", "run", "-S", f"{PARAM}={value}", "-n", exp_name(value)], repo, env={"MLFLOW_TRACKING_URI": ""})
        assert "Running stage 'partition@" in out.stdout and "Running stage 'make_examples'" not in out.stdout, out.stdout
    return repo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(ui_repo, tmp_path_factory) -> str:
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow_ui") / "mlflow_ui.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{ui_repo / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=ui_repo, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, f"mlflow ui exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow ui did not answer in {WAIT_S} s:\n{log.read_text()}"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker share the session
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture
def browser(tmp_path, monkeypatch):
    require(missing_browser())
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, predicate, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.5).until(lambda d: predicate(d))
    except TimeoutException as e:
        body = driver.find_element("tag name", "body").text[:3000]
        raise AssertionError(f"the page never showed {what}; it shows:\n{body}") from e


def _body(driver) -> str:
    return driver.find_element("tag name", "body").text


def _close_assistant(driver) -> None:
    """MLflow 3 opens its chat panel beside every page; close it so screenshots show the page."""
    for button in driver.find_elements("css selector", "button[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


def _row_values(driver, header: str) -> list[str]:
    cells = driver.find_elements("xpath", f"//tr[th[normalize-space()='{header}']]/td")
    return [c.text.strip() for c in cells]


def _compared_runs(client: MlflowClient, experiment: str) -> tuple[str, list]:
    """One run per experiment of the same stage: the last stage with a loss curve if any reran in
    both (the train stage, once it exists), else the partition stage."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
    by_stage: dict[str, dict[str, object]] = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("dvc.stage", ""), {})[r.data.tags.get("dvc.exp_name", "")] = r
    names = [exp_name(v) for v in VALUES]
    both = {s: [e[n] for n in names] for s, e in by_stage.items() if all(n in e for n in names)}
    with_loss = [s for s, rs in both.items() if all("train/loss" in r.data.metrics for r in rs)]
    stage = with_loss[-1] if with_loss else next(s for s in both if s.startswith("partition@"))
    return exp.experiment_id, both[stage]


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    paths = []
    for f in client.list_artifacts(run_id, path):
        paths += _artifact_paths(client, run_id, f.path) if f.is_dir else [f.path]
    return paths


def test_compare_page_shows_both_experiments_and_the_differing_param(ui_repo, mlflow_ui, browser, tmp_path):
    client = MlflowClient(f"sqlite:///{ui_repo / 'mlflow.db'}")
    exp_id, runs = _compared_runs(client, yaml.safe_load((ui_repo / "params.yaml").read_text())["tracking"]["experiment"])
    assert [r.data.params[PARAM] for r in runs] == [str(v) for v in VALUES]
    q = lambda x: urllib.parse.quote(json.dumps(x))  # noqa: E731
    browser.get(f"{mlflow_ui}/#/compare-runs?runs={q([r.info.run_id for r in runs])}&experiments={q([exp_id])}")

    _wait(browser, lambda d: all(r.info.run_name in _body(d) for r in runs), "both run names")
    _close_assistant(browser)  # before the checks, so the charts have re-laid out by the screenshot
    assert all(f"[{exp_name(v)}]" in _body(browser) for v in VALUES)  # run names carry the experiment
    _wait(browser, lambda d: _row_values(d, PARAM) == [str(v) for v in VALUES], f"the {PARAM} row with {VALUES}")
    # "Show diff only" keeps the differing param and hides those the runs share
    shared = _row_values(browser, "profile")
    assert len(shared) == 2 and shared[0] == shared[1] != "", shared
    browser.find_element("css selector", "button[role='switch'][aria-label='Parameters - Show diff only']").click()
    _wait(browser, lambda d: not _row_values(d, "profile"), "the shared param `profile` hidden by 'Show diff only'")
    assert _row_values(browser, PARAM) == [str(v) for v in VALUES]
    row = browser.find_element("xpath", f"//tr[th[normalize-space()='{PARAM}']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    shot = tmp_path / "mlflow_compare.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    shutil.copyfile(shot, LATEST_SCREENSHOT)

    if all("train/loss" in r.data.metrics for r in runs):  # the train stage's curves
        link = browser.find_element("css selector", "a[href*='metric=%22train']").get_attribute("href")
        browser.get(link)
        _wait(browser, lambda d: len(d.find_elements("css selector", ".js-plotly-plot .scatterlayer .trace")) >= len(runs),
              "a loss chart with one curve per run")
        _close_assistant(browser)
        assert browser.save_screenshot(str(tmp_path / "mlflow_loss.png"))

    audio = [(r, p) for r in runs for p in _artifact_paths(client, r.info.run_id) if p.endswith(AUDIO_SUFFIXES)]
    if audio:  # the train stage's samples: the artifact view plays them
        r, path = audio[0]
        browser.get(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{r.info.run_id}/artifacts/{path}")
        _wait(browser, lambda d: d.find_elements("css selector", "[data-testid='audio-artifact-preview']"), f"an audio player for {path}")
        _close_assistant(browser)
        assert browser.save_screenshot(str(tmp_path / "mlflow_audio.png"))


def test_dvc_plots_show_and_diff_render_the_declared_plots(ui_repo, tmp_path):
    shown = json.loads(run(["dvc", "plots", "show", "--json"], ui_repo).stdout)
    if not shown.get("data"):
        pytest.skip("dvc.yaml declares no plots yet (the train stage adds its loss TSV)")
    assert not shown.get("errors"), shown["errors"]
    for plot, renders in shown["data"].items():  # vega plots carry data points, image plots a file
        assert renders and all(r["content"]["data"]["values"] if r["type"] == "vega" else Path(r["url"]).is_file()
                               for r in renders), f"plot {plot} has no data"
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], ui_repo)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert all(plot in html for plot in shown["data"])
    names = [exp_name(v) for v in VALUES]
    diff = json.loads(run(["dvc", "plots", "diff", *names, "--json"], ui_repo).stdout)
    assert not diff.get("errors"), diff["errors"]
    for plot, renders in diff["data"].items():
        assert set(names) <= {rev for r in renders for rev in r["revisions"]}, f"plot {plot} lacks an experiment"
