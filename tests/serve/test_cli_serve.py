"""`metaedge token` and `metaedge serve` through the real command line in fresh processes: output, --json, exit
codes, and what happens without the server stack (import metaedge still works; serve says what to install)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.serve.harness import ROOT, Server

pytestmark = pytest.mark.timeout(300)


def cli(*argv, env=None, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "metaedge", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def test_token_create_list_revoke(tmp_path):
    store = tmp_path / "conf" / "tokens.json"
    code, out, err = cli("token", "create", "line-3", "--role", "operator", "--tokens", store)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("me_") and len(token) > 50 and "shown only now" in err
    code, out, err = cli("token", "create", "ada", "--role", "admin", "--tokens", store, "--json")
    made = json.loads(out)
    assert code == 0 and made["role"] == "admin" and made["token"].startswith("me_") and made["active"]
    code, out, err = cli("token", "create", "line-3", "--role", "viewer", "--tokens", store)
    assert code == 2 and "exists already" in err and "Traceback" not in err
    code, out, err = cli("token", "create", "bad name!", "--role", "viewer", "--tokens", store)
    assert code == 2 and "token name" in err
    code, out, err = cli("token", "list", "--tokens", store)
    assert code == 0 and "line-3" in out and "operator" in out and token not in out
    code, out, err = cli("token", "revoke", "line-3", "--tokens", store)
    assert code == 0 and "revoked 'line-3'" in out
    code, out, err = cli("token", "revoke", "line-3", "--tokens", store)
    assert code == 2 and "no active token" in err
    listed = json.loads(cli("token", "list", "--tokens", store, "--json")[1])["tokens"]
    assert [(t["name"], t["active"]) for t in listed] == [("line-3", False), ("ada", True)]
    # the environment variable names the default store
    code, out, err = cli("token", "list", env={"METAEDGE_TOKENS": str(store)})
    assert code == 0 and "ada" in out
    assert oct(os.stat(store).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("content,message", [
    ("{not json", "not JSON"),
    ('{"format": "something else", "version": 1, "tokens": []}', "not a metaedge token store"),
    ('{"format": "metaedge.tokens", "version": 99, "tokens": []}', "newer metaedge"),
    ('{"format": "metaedge.tokens", "version": 1, "tokens": [{"name": "a", "role": "god"}]}', "role"),
])
def test_damaged_token_stores_exit_4(tmp_path, content, message):
    store = tmp_path / "tokens.json"
    store.write_text(content)
    code, out, err = cli("token", "list", "--tokens", store)
    assert code == 4 and message in err and "Traceback" not in err


def test_serve_refusals_and_exit_codes(bundle, tmp_path):
    code, _, err = cli("serve", tmp_path / "nope", tmp_path / "g.metaedge")
    assert code == 4 and "not a bundle directory" in err
    code, _, err = cli("serve", bundle, tmp_path / "g.metaedge", "--alert", "unknown_rate > 2 over 1s")
    assert code == 2 and "unknown_rate is a fraction" in err
    code, _, err = cli("serve", bundle, tmp_path / "g.metaedge", "--rate-limit", "fast")
    assert code == 2 and "rate limit" in err
    code, _, err = cli("serve", bundle, tmp_path / "g.metaedge", "--certfile", tmp_path / "c.pem")
    assert code == 2 and "--keyfile" in err
    (tmp_path / "broken.metaedge").write_bytes(b"this is not a gallery")
    s = Server(bundle, tmp_path / "broken.metaedge", workdir=tmp_path, expect_start=False)
    assert s.wait() == 4 and "Traceback" not in s.stderr
    (tmp_path / "tokens.json").write_text("{oops")
    s = Server(bundle, tmp_path / "g.metaedge", tokens=tmp_path / "tokens.json", workdir=tmp_path / "t",
               expect_start=False)
    assert s.wait() == 4 and "token store is damaged" in s.stderr


BLOCK_SERVER_STACK = textwrap.dedent("""
    import sys
    for name in ("fastapi", "uvicorn", "prometheus_client", "python_multipart", "starlette"):
        sys.modules[name] = None  # any import of it now fails, as on a machine without the [serve] extra
""")


def test_without_the_server_stack(bundle, tmp_path):
    code = BLOCK_SERVER_STACK + textwrap.dedent(f"""
        import metaedge, metaedge.runtime.serve, metaedge.runtime.serve.tokens, metaedge.runtime.serve.config
        from metaedge.cli.main import main
        assert main(["token", "create", "x", "--role", "viewer", "--tokens", {str(tmp_path / 't.json')!r}]) == 0
        raise SystemExit(main(["serve", {bundle!r}, {str(tmp_path / 'g.metaedge')!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "pip install 'metaedge[serve]'" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-c", BLOCK_SERVER_STACK + "from metaedge.cli.main import main\n"
                           "raise SystemExit(main(['serve', '--help']))"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "--workers" in proc.stdout
