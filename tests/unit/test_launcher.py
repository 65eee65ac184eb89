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
