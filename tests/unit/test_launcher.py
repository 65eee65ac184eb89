import pytest

from studio.launcher import is_loopback, parse_auth


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts_need_no_auth(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "example.org"])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_auth_parses_user_and_password_and_refuses_malformed():
    assert parse_auth("alice:s3:cret") == ("alice", "s3:cret")
    assert parse_auth(None) is None
    with pytest.raises(SystemExit, match="USER:PASS"):
        parse_auth("alice")


def test_the_studio_warms_the_bundled_model_then_the_estimators_libraries(monkeypatch):
    from backend.core import models
    from backend.estimator import skeleton
    from studio import launcher

    calls = []
    monkeypatch.setattr(models, "ensure_bundled", lambda name: calls.append(("bundled", name)))
    monkeypatch.setattr(skeleton, "preload", lambda: calls.append(("preload",)))
    launcher.warm_up()
    assert calls == [("bundled", models.DEFAULT_MODEL), ("preload",)]

    def broken():
        raise RuntimeError("no space left")

    monkeypatch.setattr(skeleton, "preload", broken)
    launcher.warm_up()  # a failure is a note on stderr, never an exception in the start-up thread


def test_preload_imports_what_a_skeleton_build_needs():
    import subprocess
    import sys

    code = ("import sys; from backend.estimator.skeleton import preload; "
            "assert 'peft' not in sys.modules; preload(); "
            "assert 'peft.tuners.lora' in sys.modules and 'transformers.models.llama.modeling_llama' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
