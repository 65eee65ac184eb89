"""Starting the Gradio server: workspace, bind address, login."""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from backend.core.security import LOOPBACK_NAMES, is_loopback  # noqa: F401 - the launcher's names, kept


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth takes USER:PASS, for example --auth alice:s3cret")
    return user, password


def _quietly(fn, *args, what: str = "preparing the bundled model") -> None:
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported again where the model is used
        print(f"note: {what} failed: {e}", file=sys.stderr)


def warm_up() -> None:
    """What the studio prepares in the background once its tabs are built: the bundled model's conversion,
    then the estimator's libraries, so a first estimate for a new model waits for arithmetic, not imports."""
    from backend.core.models import DEFAULT_MODEL, ensure_bundled
    from backend.estimator.skeleton import preload

    _quietly(ensure_bundled, DEFAULT_MODEL)
    _quietly(preload, what="loading the estimator's libraries")


def _patient_localhost_probe() -> None:
    """Gradio probes its own page once with a 3 s timeout and refuses to start if that times out;
    on a busy machine (a training on every core) the first render can take longer. Retry a while."""
    from gradio import networking

    probe = networking.url_ok
    if getattr(probe, "_ftstudio_patient", False):
        return

    def patient(url: str, patience_s: float = 180.0) -> bool:
        # Gradio's own probe gives up after 3 s; under a load of 8 per core the first render has
        # been measured at 6-14 s. One request at a time with a long timeout (short ones would
        # pile renders up on the server), until a deadline.
        import time

        import httpx

        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            try:
                if httpx.head(url, timeout=60, verify=False).status_code in (200, 401, 301, 302, 303, 307, 308):
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return probe(url)

    patient._ftstudio_patient = True  # type: ignore[attr-defined]
    networking.url_ok = patient


def launch_from_args(args: argparse.Namespace) -> None:
    from backend.core.noise import quiet_known_noise

    quiet_known_noise()  # the start-up output shows only what a user can act on
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    os.environ["FTSTUDIO_WORKSPACE"] = str(workspace)
    pair = parse_auth(args.auth)
    allowed = []
    for folder in getattr(args, "allow_path", None) or []:
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise SystemExit(f"--allow-path {folder}: no such folder. Name an existing folder to let the studio read it.")
        allowed.append(p)
    from backend.core import access
    allowed = access.allow_paths(allowed)
    if not is_loopback(args.host) and pair is None:
        print(f"WARNING: the studio is bound to {args.host} without --auth: anyone who can reach "
              "this address can start training and read your data. Add --auth USER:PASS.",
              file=sys.stderr)
    from studio.app import build_app, CSS

    demo = build_app(workspace)
    # Convert the bundled default model in the background so the first tab that needs it
    # does not wait; failures surface later as sentences where the model is used. Started only
    # after the tabs are built: transformers' lazy imports are not safe to race from two threads,
    # and the build imports parts of it (the trainers' callbacks) that the conversion imports too.
    # Imported here, not at the top: studio.app pulls in gradio and every tab, and both names are
    # looked up at launch time (tests replace studio.app.build_app and models.ensure_bundled).
    threading.Thread(target=warm_up, daemon=True).start()
    _patient_localhost_probe()
    demo.queue(default_concurrency_limit=4)
    print(f"Fine-Tune Studio: http://{args.host}:{args.port}  (workspace {workspace})", flush=True)
    if allowed:
        print("The studio may also read: " + ", ".join(str(p) for p in allowed), flush=True)
    from starlette.middleware import Middleware
    from studio.login_throttle import login_checker
    from studio.web_guard import OriginGuard

    # A wrong password is slowed down (login_throttle); cross-site POSTs are refused (web_guard).
    auth = login_checker(*pair) if pair else None
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, inbrowser=False,
                share=False, show_error=True, css=CSS, allowed_paths=[str(workspace)],
                footer_links=[], ssr_mode=False, quiet=True,
                app_kwargs={"middleware": [Middleware(OriginGuard)]})
