"""End to end in real VS Code: code-server 4.139.1 (VS Code 1.139.1) with the packaged
gemma-lsp.vsix, driven in Debian's Chromium through Playwright, against `gemma-lsp serve`
on the real default model.

What a user does, in order: the server path is set in **User** settings (the case VS Code
ignored in remote windows while the settings were `machine-overridable`), a file is opened
and `    return ` typed: grey ghost text appears and Tab accepts it (the saved file must pass
its asserts); the status-bar item shows the server's stats; a setting changed in the
Settings editor reaches the server; "gemma-lsp: Toggle Completions" turns ghost text off
and on; "gemma-lsp: Restart Server" starts a new server process that answers.

Nothing leaves the machine: code-server listens on 127.0.0.1 only, telemetry, update checks
and the gallery are off, and HTTP(S) proxies point at a dead loopback port.

Slow: code-server, Chromium and the model start (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import need_default_model
from gemma_lsp.paths import cache_dir
from real_editors import CACHE, ROOT, TASK_LINE, chromium, code_server, need, run_file, server_command, write_task
from wire import free_port

pytestmark = pytest.mark.slow

VSCODE = ROOT / "editors" / "vscode"
SECOND = '''\
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return


assert add(2, 3) == 5
'''
GHOST = ".ghost-text-decoration"
WAIT_MS = 180_000  # the first ghost text waits for the model to load


def packaged_vsix(out: Path) -> Path:
    """The .vsix a user installs, packaged from this checkout (npm ci must have run)."""
    if not (VSCODE / "node_modules").is_dir():
        need(False, "editors/vscode/node_modules (npm ci in editors/vscode; scripts/test.sh does)")
    vsix = out / "gemma-lsp.vsix"
    for cmd in (["npm", "run", "build"], ["npx", "vsce", "package", "--no-dependencies",
                                          "--allow-missing-repository", "--out", str(vsix)]):
        proc = subprocess.run(cmd, cwd=VSCODE, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return vsix


def user_settings() -> dict[str, object]:
    command = server_command()
    return {
        "gemmaLsp.serverPath": command[0],          # in User settings, as the README says
        "gemmaLsp.serverArgs": command[1:],
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "extensions.autoUpdate": False,
        "extensions.autoCheckUpdates": False,
        "extensions.gallery.serviceUrl": "",
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "security.workspace.trust.enabled": False,
        "chat.disableAIFeatures": True,
        "editor.inlineSuggest.enabled": True,
        "gemmaLsp.trace.server": "messages",  # the LSP traffic in the output channel, for failure reports
    }


def in_session(sid: int) -> list[int]:
    """Every process of session `sid`, from /proc. code-server re-spawns itself (its first
    process exits), so the tree is followed by session, which start_new_session fixed."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid:  # after ")": state ppid pgrp session
                out.append(int(d.name))
    return out


@dataclass
class Workbench:
    page: object
    proc: subprocess.Popen
    folder: Path
    user_data: Path

    def servers(self) -> list[int]:
        """The gemma-lsp server processes VS Code started."""
        found = []
        for pid in in_session(self.proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"gemma-lsp" in a or b"gemma_lsp" in a for a in argv) and b"serve" in argv:
                found.append(pid)
        return found

    def server_log(self) -> str:
        """The extension's output channel (server stderr included), as VS Code writes it."""
        return "".join(p.read_text(errors="replace") for p in self.user_data.glob("logs/**/*gemma-lsp.log"))

    def status_text(self) -> str:
        return " | ".join(self.page.locator(".statusbar-item").all_inner_texts())

    def quick_pick(self, key: str, text: str) -> None:
        """Open a quick-input box with `key`, type `text`, wait for its row, take it."""
        page = self.page
        page.keyboard.press(key)
        page.wait_for_selector(".quick-input-widget input", timeout=20_000)
        page.keyboard.type(text)
        page.wait_for_selector(f".quick-input-list .monaco-list-row[aria-label*='{text}']", timeout=20_000)
        page.keyboard.press("Enter")

    def command(self, title: str) -> None:
        """Run a command from the palette, by its title, as a user does."""
        self.quick_pick("F1", title)

    def open_file(self, name: str) -> None:
        """Quick Open (Ctrl+P) the file, then put the focus in its editor."""
        self.quick_pick("Control+P", name)
        self.page.wait_for_selector(f".tab.active[aria-label*='{name}']", timeout=20_000)
        self.page.click(".editor-instance .monaco-editor .view-lines")

    def type_at_line_end(self, line: int, text: str) -> None:
        page = self.page
        page.keyboard.press("Control+G")
        page.keyboard.type(str(line))
        page.keyboard.press("Enter")
        page.keyboard.press("End")
        page.keyboard.type(text)

    def ghost(self, timeout_ms: int) -> str | None:
        try:
            self.page.wait_for_selector(GHOST, timeout=timeout_ms)
        except Exception:  # Playwright's TimeoutError
            return None
        return " ".join(self.page.locator(GHOST).all_inner_texts())

    def shot(self, name: str) -> Path:
        path = self.folder.parent / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def workbench(tmp_path_factory) -> Iterator[Workbench]:
    need_default_model()
    cs = code_server()
    need(cs is not None, f"code-server (under {CACHE})")
    browser_exe = chromium()
    need(browser_exe is not None, "chromium (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "Playwright for Python (pip install playwright; never `playwright install`)")

    base = tmp_path_factory.mktemp("vscode")
    folder = base / "project"
    write_task(folder)
    (folder / "add.py").write_text(SECOND)
    user_data, extensions = base / "user-data", base / "extensions"
    (user_data / "User").mkdir(parents=True)
    (user_data / "User" / "settings.json").write_text(json.dumps(user_settings(), indent=2))
    (base / "config.yaml").write_text(f"bind-addr: 127.0.0.1:{free_port()}\nauth: none\ncert: false\n")
    dead = "http://127.0.0.1:9"  # nothing listens there: any download attempt fails at once
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
           "NO_PROXY": "127.0.0.1,localhost", "XDG_CONFIG_HOME": str(base / "config"),
           "XDG_DATA_HOME": str(base / "data"), "GEMMA_LSP_CACHE": str(cache_dir())}
    common = [str(cs.node), str(cs.entry), "--config", str(base / "config.yaml"), "--user-data-dir", str(user_data),
              "--extensions-dir", str(extensions)]
    proc = subprocess.run([*common, "--install-extension", str(packaged_vsix(base))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "successfully installed" in proc.stdout, proc.stdout + proc.stderr

    log = open(base / "code-server.log", "wb")
    server = subprocess.Popen([*common, "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
                               "--disable-getting-started-override", str(folder)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline and server.poll() is None:
        m = re.search(r"HTTP server listening on (http://127\.0\.0\.1:\d+/)", (base / "code-server.log").read_text())
        url = m.group(1) if m else time.sleep(0.2)
    assert url, f"code-server did not start:\n{(base / 'code-server.log').read_text()[-3000:]}"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}?folder={folder}")
        page.wait_for_selector(".monaco-workbench", timeout=120_000)
        wb = Workbench(page, server, folder, user_data)
        try:
            yield wb
        finally:
            wb.shot("last")
            browser.close()
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            log.close()


def test_ghost_text_then_tab_accepts(workbench: Workbench) -> None:
    wb = workbench
    wb.open_file("palindrome.py")
    wb.type_at_line_end(TASK_LINE, " ")
    ghost = wb.ghost(WAIT_MS)
    assert ghost, (f"no ghost text after typing `return ` (screenshot {wb.shot('no-ghost')}); "
                   f"server log:\n{wb.server_log()[-3000:]}")
    wb.page.keyboard.press("Tab")
    wb.page.keyboard.press("Control+S")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "    return \n" in (wb.folder / "palindrome.py").read_text():
        time.sleep(0.2)
    graded = run_file(wb.folder / "palindrome.py")
    assert graded.returncode == 0, (f"ghost text {ghost!r} accepted with Tab does not pass the task:\n"
                                    f"{(wb.folder / 'palindrome.py').read_text()}\n{graded.stderr[-1500:]}")


def test_status_bar_shows_stats(workbench: Workbench) -> None:
    # After an answer the item reads e.g. "acc 33% · reuse 0% · 1466 ms": counters from gemma/stats.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not re.search(r"reuse \d+% · \d+ ms", workbench.status_text()):
        time.sleep(0.5)
    assert re.search(r"acc (\d+%|–) · reuse \d+% · \d+ ms", workbench.status_text()), workbench.status_text()


def test_setting_changed_in_the_settings_editor_reaches_the_server(workbench: Workbench) -> None:
    page = workbench.page
    page.keyboard.press("Control+Comma")
    page.wait_for_selector(".settings-editor .suggest-input-container", timeout=30_000)
    page.click(".settings-editor .suggest-input-container")  # the search box
    page.keyboard.type("gemmaLsp.maxTokens")
    field = page.locator('.setting-item-contents[data-key="gemmaLsp.maxTokens"] input')
    field.wait_for(timeout=30_000)
    field.fill("48")
    field.press("Tab")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "'maxTokens': 48" not in workbench.server_log():
        time.sleep(0.5)
    files = {str(p): p.read_text() for p in (workbench.user_data / "User" / "settings.json",
                                             workbench.folder / ".vscode" / "settings.json") if p.exists()}
    assert "'maxTokens': 48" in workbench.server_log(), (
        f"settings files {files}\nscreenshot {workbench.shot('settings')}\n{workbench.server_log()[-3000:]}")
    page.keyboard.press("Control+W")  # close the Settings editor


# The status-bar item while completions are off: the circle-slash icon and "gemma".
DISABLED = "() => [...document.querySelectorAll('.statusbar-item')].some(e => e.innerText.trim() === 'gemma')"


def test_toggle_turns_ghost_text_off_and_on(workbench: Workbench) -> None:
    wb = workbench
    wb.command("gemma-lsp: Toggle Completions")
    wb.page.wait_for_function(DISABLED, timeout=20_000)
    wb.open_file("add.py")
    wb.type_at_line_end(3, " ")
    assert wb.ghost(8_000) is None, "ghost text while completions are toggled off"
    wb.command("gemma-lsp: Toggle Completions")
    wb.page.wait_for_function(f"() => !({DISABLED})()", timeout=20_000)  # the setting has landed
    wb.page.keyboard.press("Backspace")
    wb.page.keyboard.type(" ")
    assert wb.ghost(WAIT_MS), f"no ghost text after toggling back on ({wb.shot('toggle')})"
    wb.page.keyboard.press("Escape")


def test_restart_server_starts_a_new_process_that_answers(workbench: Workbench) -> None:
    wb = workbench
    before = wb.servers()
    assert len(before) == 1, f"expected one gemma-lsp server under code-server, found {before}"
    wb.command("gemma-lsp: Restart Server")
    deadline = time.monotonic() + 60  # the old process exits (shutdown, exit), a new one starts
    while time.monotonic() < deadline and (len(wb.servers()) != 1 or wb.servers() == before):
        time.sleep(0.5)
    after = wb.servers()
    assert len(after) == 1 and after != before, f"server processes before {before}, after {after}"
    wb.page.click(".editor-instance .monaco-editor .view-lines")
    wb.type_at_line_end(3, "")
    wb.page.keyboard.press("Backspace")
    wb.page.keyboard.type(" ")
    assert wb.ghost(WAIT_MS), f"no ghost text from the restarted server ({wb.shot('restart')})"
