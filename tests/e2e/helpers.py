"""What the e2e tests share: the running studio, tab navigation, screenshots."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Headless in a container: no sandbox (often no user namespaces), no GPU, and nothing that phones home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TABS = ("Dataset", "Method", "Train", "Merge", "Chat")
SCREENSHOT_DIR = REPO / "tests" / "e2e" / "screenshots"
DOCS_SCREENSHOT_DIR = REPO / "docs" / "screenshots"


@dataclass
class Studio:
    url: str
    workspace: Path
    log_path: Path
    proc: subprocess.Popen
    hub_cache: Optional[Path] = None  # HF_HUB_CACHE of the studio process

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"


def goto_studio(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url, wait_until="domcontentloaded")
    # Gradio renders client-side: the page is usable once the tab bar exists.
    expect(tab_button(page, TABS[0])).to_be_visible(timeout=180_000)
    # The Dataset tab loads the default sample on page load; an action taken before that
    # finishes would be overwritten by it, so a test starts once the page has settled.
    expect(page.locator("#dataset-status")).not_to_contain_text("No dataset loaded yet", timeout=240_000)


def tab_button(page, title: str):
    return page.get_by_role("tab", name=title, exact=True)


def open_tab(page, title: str):
    """Click a tab and wait until its panel is the visible one; returns the panel locator."""
    from playwright.sync_api import expect

    button = tab_button(page, title)
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")
    panel = page.locator(f"#tab-{title.lower()}")
    expect(panel).to_be_visible()
    wait_settled(page)
    return panel


def wait_settled(page, timeout_ms: int = 180_000) -> None:
    """Wait until no visible component shows Gradio's pending/progress overlay (a page-load event, say):
    a value typed while an event is still writing its outputs can be overwritten by it."""
    page.wait_for_function(
        "() => ![...document.querySelectorAll('[data-testid=status-tracker]')].some(e =>"
        " !e.classList.contains('hide') && e.offsetParent !== null"
        " && /processing|queue|\\d\\.\\ds/.test(e.innerText))",
        timeout=timeout_ms)


def choose_lora_on(page, model_ref, steps: int, pick_method: bool = True,
                   model_info: str = "2 layers, hidden size 64") -> None:
    """The CPU preset, then the tiny test model and a handful of steps: a real run in seconds.

    Every change re-runs the estimate (seconds each on a busy CPU), so only what matters is set."""
    from playwright.sync_api import expect

    panel = open_tab(page, "Method")
    pick_option(page, "method-preset", "Quick try on CPU")
    field(page, "method-apply-preset").click()
    expect(panel).to_contain_text("Applied preset")
    wait_settled(page)
    set_value(page, "method-model", str(model_ref))
    expect(field(page, "method-model-info")).to_contain_text(model_info)
    wait_settled(page)
    if pick_method:  # the preset is LoRA already; the flow test picks it as a user would
        pick_option(page, "method-name", "^LoRA$")
    set_labelled(panel, "Max steps", steps)
    wait_settled(page)
    # The estimate is a stacked bar of memory terms; the verdict says whether it fits.
    page.wait_for_function(
        "() => { const p = document.querySelector('#method-estimate .js-plotly-plot');"
        " return p && p.data && p.data.length >= 3; }", timeout=60_000)
    expect(field(page, "method-fits")).to_contain_text(re.compile(r"\d"))


def save_screenshot(page, name: str) -> Path:
    """Save a screenshot of the current page; with FTSTUDIO_UPDATE_SCREENSHOTS=1 also the README copy."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    wait_settled(page)  # no half-drawn progress overlays in the picture
    print(f"[e2e] {time.strftime('%H:%M:%S')} screenshot {name}", file=sys.stderr)
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FTSTUDIO_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        (DOCS_SCREENSHOT_DIR / f"{name}.png").write_bytes(path.read_bytes())
    return path


def field(page, elem_id: str):
    return page.locator(f"#{elem_id}")


def set_value(page, elem_id: str, value) -> None:
    """Set a Gradio input by elem_id, whatever its widget: dropdown, radio, checkbox, number or text."""
    root = field(page, elem_id)
    root.wait_for(state="visible")
    combo = root.locator("input[role=combobox]")
    if combo.count():
        combo.click()
        option = page.get_by_role("option", name=str(value), exact=True)
        if option.count():
            option.first.click()
        else:  # a dropdown that accepts custom values (a model path, say)
            combo.fill(str(value))
            combo.press("Enter")
        return
    radios = root.locator("input[type=radio]")
    if radios.count():
        root.locator(f"input[type=radio][value='{value}']").check()
        return
    box = root.locator("input[type=checkbox]")
    if box.count():
        box.set_checked(bool(value))
        return
    entry = root.locator("input[type=number], textarea, input[type=text]").first
    entry.fill(str(value))
    # Gradio fires .change on input and .blur/.submit on leaving; leave so both have happened.
    entry.press("Tab")


def pick_option(page, elem_id: str, pattern) -> str:
    """Open a dropdown and click the first option matching a regex (labels often hold run ids); returns its text."""
    combo = field(page, elem_id).locator("input[role=combobox]")
    combo.click()
    option = page.get_by_role("option", name=re.compile(pattern)).first
    option.wait_for(state="visible")
    text = option.inner_text()
    option.click()
    return text


def set_labelled(scope, label: str, value) -> None:
    """Set a number, text or dropdown field inside scope (a tab panel) by the start of its label."""
    name = re.compile("^" + re.escape(label))
    combo = scope.get_by_role("combobox", name=name)
    if combo.count():
        combo.first.click()
        scope.page.get_by_role("option", name=str(value), exact=True).first.click()
        return
    entry = scope.get_by_label(name).first
    entry.fill("" if value is None else str(value))
    entry.press("Tab")


def plot_points(page, elem_id: str) -> int:
    """How many y values the plotly figure inside elem_id draws (0 when there is no figure yet)."""
    plot = field(page, elem_id).locator(".js-plotly-plot")
    if not plot.count():
        return 0
    return plot.first.evaluate("e => (e.data || []).reduce((n, t) => n + ((t.y || []).length), 0)")


def run_groups(workspace: Path, active_only: bool = False) -> list[int]:
    """Process groups of the runs this workspace started (each run is its own session), never our own."""
    import json

    out = []
    for status in workspace.glob("runs/*/status.json"):
        try:
            data = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        pgid = data.get("pgid")
        if active_only and data.get("state") not in ("starting", "running", "stopping"):
            continue
        if isinstance(pgid, int) and pgid > 1 and pgid != os.getpgid(0):
            out.append(pgid)
    return out


def end_runs_of(workspace: Path) -> None:
    """Kill any training this workspace still has going (a failed test must not leave the next one busy)."""
    import signal

    for pgid in run_groups(workspace, active_only=True):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
