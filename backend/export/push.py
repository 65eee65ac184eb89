"""`ftstudio push`: upload a run's adapter, its merged model or a GGUF export to the model hub, with its card.

Everything that can be said before the upload is said first, as a sentence: a repo name the hub would
refuse, nothing to upload, a machine set to work offline, no token. The upload itself is huggingface_hub's
(`create_repo`, `upload_folder`); a hub that cannot be reached or refuses the token is a sentence too.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from backend.core.errors import UserError
from backend.core.io import read_json
from backend.export.merge import _MERGED_MARK, Progress, _say, locate_adapter
from backend.runs.model_card import CARD_FILE, parse_front_matter, write_card

WHAT = ("adapter", "merged", "gguf")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_OFFLINE = ("1", "true", "yes", "on")


def check_repo_id(repo: str) -> str:
    """owner/name as the hub accepts it (letters, digits, '-', '_', '.'; no '--' or '..')."""
    repo = (repo or "").strip()
    if not _REPO.match(repo) or "--" in repo or ".." in repo or repo.endswith((".git", ".")):
        raise UserError(f"{repo!r} is not a hub repository name. Use owner/name, for example alice/my-tuned-model "
                        "(letters, digits, '-', '_' and '.'; no spaces, no '--' or '..').")
    return repo


def hub_token(token: Optional[str] = None) -> Optional[str]:
    """The token from the argument, HF_TOKEN, or a `hf auth login` on this machine."""
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token
        return get_token()
    except Exception:  # noqa: BLE001 - an unreadable token file is the same as none
        return None


def _run_dir_of(run: str | Path) -> Path:
    p = Path(str(run)).expanduser().resolve()
    if not p.is_dir():
        raise UserError(f"{p} is not a folder. Give a run directory (or an adapter, merged model or GGUF file).")
    return p


def merged_folders(run_dir: Path) -> list[Path]:
    """Merged models the studio wrote from this run: run/merged, or workspace/merged/* whose mark names the run."""
    run_dir = Path(run_dir).resolve()
    found = [run_dir / "merged"] if (run_dir / "merged" / _MERGED_MARK).exists() else []
    ws_merged = run_dir.parent.parent / "merged"
    for mark in sorted(ws_merged.glob(f"*/{_MERGED_MARK}")) if ws_merged.is_dir() else []:
        info = read_json(mark, {}) or {}
        adapter = Path(str(info.get("adapter") or "")).resolve() if info.get("adapter") else None
        if adapter is not None and (adapter == run_dir / "adapter" or run_dir in adapter.parents):
            found.append(mark.parent)
    return found


def gguf_files(run_dir: Path) -> list[Path]:
    """GGUF exports of this run: in the run folder, or workspace/exports/<run>*.gguf."""
    run_dir = Path(run_dir).resolve()
    exports = run_dir.parent.parent / "exports"
    return sorted({*run_dir.glob("*.gguf"), *(exports.glob(f"{run_dir.name}*.gguf") if exports.is_dir() else [])})


def _run_of_merged(folder: Path) -> Optional[Path]:
    """The run a merged folder came from, as its merge mark records it."""
    adapter = (read_json(folder / _MERGED_MARK, {}) or {}).get("adapter")
    if not adapter:
        return None
    return next((d for d in (Path(adapter).parent, Path(adapter).parent.parent) if (d / "config.yaml").exists()),
                None)


def find_upload(source: str | Path, what: str, path: Optional[str] = None) -> tuple[Path, Optional[Path]]:
    """(what to upload: a folder or a .gguf file, the run directory it came from)."""
    if what not in WHAT:
        raise UserError(f"--what takes one of {', '.join(WHAT)}; got {what!r}.")
    p = _run_dir_of(source) if not str(source).endswith(".gguf") else Path(source).expanduser().resolve()
    if path:
        target = Path(path).expanduser().resolve()
        if not target.exists():
            raise UserError(f"{target} does not exist. Give the folder or file to upload.")
        run = p if (p / "config.yaml").exists() else None
        return target, run
    if what == "gguf":
        if p.is_file():
            return p, None
        files = gguf_files(p)
        if len(files) != 1:
            how = "none was found" if not files else f"{len(files)} were found ({', '.join(f.name for f in files)})"
            raise UserError(f"Pushing a GGUF needs one file, but {how} for {p.name}. Export one first "
                            "(ftstudio export RUN --format gguf) or name it with --file.")
        return files[0], p
    if what == "merged":
        if (p / "config.json").exists() and (p / _MERGED_MARK).exists():
            return p, _run_of_merged(p)
        folders = merged_folders(p)
        if not folders:
            raise UserError(f"{p.name} has no merged model yet. Merge it first (ftstudio merge {p} --out FOLDER, or "
                            "the Merge tab), then push with --file FOLDER or again with --what merged.")
        if len(folders) > 1:
            raise UserError(f"{p.name} has {len(folders)} merged models ({', '.join(str(f) for f in folders)}); "
                            "name the one to push with --file.")
        return folders[0], p
    src = locate_adapter(p)
    return src.adapter_dir, src.run_dir


def _staged(target: Path, run_dir: Optional[Path], what: str, base: Optional[str],
            repo: str) -> tuple[Path, Callable[[], None]]:
    """A folder to upload with a fresh card: the folder itself (its README.md rewritten), or for a GGUF a
    temporary folder holding a link to the file and the card."""
    if target.is_dir():
        if what == "merged" and run_dir is None and parse_front_matter(_text(target / CARD_FILE)):
            return target, lambda: None  # its own card (written by the merge) knows more than we would
        write_card(target, run_dir, kind=what, base=base, repo=repo)
        return target, lambda: None
    tmp = Path(tempfile.mkdtemp(prefix="ftstudio-push-"))
    try:
        os.link(target, tmp / target.name)
    except OSError:
        shutil.copy2(target, tmp / target.name)
    modelfile = target.with_name(target.stem + ".Modelfile")  # written beside the GGUF by the export
    if modelfile.exists():
        shutil.copy2(modelfile, tmp / "Modelfile")
    write_card(tmp, run_dir, kind="gguf", base=base, repo=repo)
    return tmp, lambda: shutil.rmtree(tmp, ignore_errors=True)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _hub_sentence(e: Exception, repo: str) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return (f"The hub refused the token for {repo} (HTTP {status}). Check that HF_TOKEN is a write token for "
                "that owner (hub settings → Access Tokens).")
    if status is not None:
        return f"The hub answered HTTP {status} for {repo}: {str(e).splitlines()[0][:200]}."
    return (f"The hub could not be reached ({type(e).__name__}). Check the connection (or HF_ENDPOINT), then push "
            "again; nothing was uploaded.")


def push(source: str | Path, repo: str, what: str = "adapter", path: Optional[str] = None,
         token: Optional[str] = None, private: bool = False, api: Any = None,
         progress: Progress = None) -> dict[str, Any]:
    """Upload to `repo`; `api` replaces huggingface_hub.HfApi (tests use a local stand-in)."""
    repo = check_repo_id(repo)
    target, run_dir = find_upload(source, what, path)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE:
        raise UserError("This machine is set to work offline (HF_HUB_OFFLINE=1), so nothing can be pushed. "
                        f"Unset HF_HUB_OFFLINE where the hub is reachable, or upload {target} by hand.")
    token = hub_token(token)
    if not token:
        raise UserError("No hub token is set. Create a write token on the hub (settings → Access Tokens), then "
                        "set HF_TOKEN or run `hf auth login`, and push again.")
    base = None
    try:
        base = locate_adapter(run_dir).base if run_dir else None
    except UserError:
        pass
    folder, cleanup = _staged(target, run_dir, what, base, repo)
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                   if f.is_file() and f.name != _MERGED_MARK and not f.name.endswith(".partial"))
    try:
        if api is None:
            from huggingface_hub import HfApi
            # HF_ENDPOINT read now, not at import: a private hub (or a test's stand-in) set after start-up counts.
            api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        _say(progress, 0.1, f"Creating {repo} on the hub")
        try:
            url = api.create_repo(repo, private=private, exist_ok=True, token=token)
            _say(progress, 0.3, f"Uploading {target.name}")
            commit = api.upload_folder(repo_id=repo, folder_path=str(folder), token=token,
                                       commit_message=f"Upload {what} from Fine-Tune Studio",
                                       ignore_patterns=[_MERGED_MARK, "*.partial", ".*"])
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - network and HTTP failures become the sentence
            raise UserError(_hub_sentence(e, repo)) from e
    finally:
        cleanup()
    _say(progress, 1.0, f"Pushed to {repo}")
    return {"repo": repo, "what": what, "source": str(target), "url": str(url),
            "commit": str(getattr(commit, "commit_url", commit)), "card": CARD_FILE, "files": files}


def push_command(source: str, repo: str, what: str = "adapter", path: Optional[str] = None,
                 private: bool = False) -> list[str]:
    """The `ftstudio push` command line the Merge tab runs in a child process."""
    import sys

    cmd = [sys.executable, "-m", "backend.cli", "push", str(source), "--repo", repo, "--what", what, "--json",
           "--progress-json"]
    if path:
        cmd += ["--file", str(path)]
    if private:
        cmd.append("--private")
    return cmd
