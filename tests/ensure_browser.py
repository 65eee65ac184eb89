"""Install what the browser tests need where it is missing: Debian's Chromium (root + apt only) and
the axe-core npm package for the contrast check (npm, into .test-cache/axe; nothing is vendored).

Never fails the test command: where something cannot be installed, the tests that need it skip
with a loud reason instead.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
AXE_DIR = Path(__file__).resolve().parents[1] / ".test-cache" / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_VERSION = "4"


def ensure_axe() -> Path | None:
    """axe.min.js, installed with npm the first time; None where npm is missing or fails."""
    if AXE_JS.exists():
        return AXE_JS
    npm = shutil.which("npm")
    if npm is None:
        print("ensure_browser: npm is missing, so axe-core cannot be installed; the contrast test will be "
              "skipped. Install Node.js/npm (apt-get install npm).", file=sys.stderr)
        return None
    AXE_DIR.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([npm, "install", "--prefix", str(AXE_DIR), "--no-audit", "--no-fund", "--silent",
                        f"axe-core@{AXE_VERSION}"], check=False, timeout=300)
    if r.returncode != 0 or not AXE_JS.exists():
        print("ensure_browser: `npm install axe-core` failed; the contrast test will be skipped.", file=sys.stderr)
        return None
    return AXE_JS


def main() -> int:
    ensure_axe()
    if os.path.exists(CHROMIUM):
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("ensure_browser: Chromium is missing and cannot be installed here (need root and apt-get); "
              "the e2e tests will be skipped.", file=sys.stderr)
        return 0
    print("ensure_browser: installing Debian's chromium for the e2e tests ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"], env=env, check=False)
    if r.returncode != 0 or not os.path.exists(CHROMIUM):
        print("ensure_browser: installing chromium failed; the e2e tests will be skipped.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
