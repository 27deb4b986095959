"""Access control and limits of a real server: no token 401, a viewer enrolling 403, an operator enrolling, a
revoked token 401 at once, admin-only token management, the audit trail naming the token, the per-token rate
limit (429 + Retry-After, shared by workers), oversized bodies and images 413, TLS with a self-signed certificate
made here, --read-only, --keep-shots, and the refusal to serve other machines without tokens."""
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.serve.harness import ROOT, Server, make_token, png

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def secured(bundle, tmp_path_factory):
    work = tmp_path_factory.mktemp("access")
    tokens = work / "tokens.json"
    names = {"viewer": make_token(tokens, "vera", "viewer"), "operator": make_token(tokens, "otto", "operator"),
             "admin": make_token(tokens, "ada", "admin")}
    with Server(bundle, work / "g.metaedge", "--rate-limit", "off", "--max-upload-mb", "0.25",
                "--max-pixels", str(300 * 300), "--max-images", "4", tokens=tokens, workdir=work) as s:
        s.tokens, s.tokens_path = names, tokens
        yield s


def image(objects, label="shape0-r", i=0):
    return png(objects[label][i])


def post_image(client, path, data, **kw):
    return client.post(path, content=data, headers={"Content-Type": "image/png"}, **kw)


def test_roles(secured, objects):
    with secured.client() as anonymous:
        for method, path in (("GET", "/v1/classes"), ("POST", "/v1/predict"), ("GET", "/metrics"),
                             ("GET", "/v1/info"), ("POST", "/v1/classes/x/shots"), ("GET", "/v1/live/mjpeg")):
            r = anonymous.request(method, path)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.get("/healthz").status_code == 200 and anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/").status_code == 200  # the page itself is public; its data is not
        r = anonymous.get("/v1/classes", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert r.status_code == 401
        r = anonymous.get("/v1/classes", headers={"Authorization": "Bearer me_0123456789ab_" + "x" * 43})
        assert r.status_code == 401 and "unknown or revoked" in r.json()["message"]
        assert anonymous.get("/v1/classes", params={"access_token": secured.tokens["admin"]}).status_code == 401

    with secured.client(secured.tokens["viewer"]) as viewer:
        r = post_image(viewer, "/v1/classes/red/shots", image(objects))
        assert r.status_code == 403 and r.json()["error"] == "forbidden" and "operator" in r.json()["message"]
        assert viewer.delete("/v1/classes/red").status_code == 403
        assert viewer.post("/v1/adapt", json={}).status_code == 403
        assert viewer.put("/v1/live/roi", json={"roi": None}).status_code == 403
        assert viewer.get("/v1/tokens").status_code == 403
        assert viewer.get("/metrics").status_code == 200
        assert viewer.get("/v1/info").json()["you"] == {"name": "vera", "role": "viewer"}

    with secured.client(secured.tokens["operator"]) as operator:
        assert post_image(operator, "/v1/classes/red/shots", image(objects)).status_code == 201
        assert post_image(operator, "/v1/classes/blue/shots", image(objects, "shape0-b")).status_code == 201
        assert operator.patch("/v1/classes/blue", json={"label": "navy"}).status_code == 200
        assert operator.get("/v1/tokens").status_code == 403
    with secured.client(secured.tokens["viewer"]) as viewer:
        r = post_image(viewer, "/v1/predict", image(objects, "shape0-r", 4))
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "red"
        entries = [e for e in viewer.get("/v1/history").json()["entries"] if e["op"] in ("enroll", "rename")]
    assert [(e["op"], e["label"], e["actor"]) for e in entries] == [
        ("enroll", "red", "otto"), ("enroll", "blue", "otto"), ("rename", "navy", "otto")]


def test_revoked_tokens_are_refused_at_once(secured, objects):
    with secured.client(secured.tokens["admin"]) as admin:
        listed = admin.get("/v1/tokens").json()["tokens"]
        assert {t["name"] for t in listed} >= {"vera", "otto", "ada"}
        assert all("sha256" not in t and "token" not in t for t in listed)
        made = admin.post("/v1/tokens", json={"name": "temp", "role": "operator"})
        assert made.status_code == 201 and made.json()["token"].startswith("me_")
        assert admin.post("/v1/tokens", json={"name": "temp", "role": "operator"}).status_code == 400
        assert admin.post("/v1/tokens", json={"name": "x", "role": "root"}).status_code == 400
        temp = made.json()["token"]
        with secured.client(temp) as c:
            assert c.get("/v1/classes").status_code == 200
            assert admin.delete("/v1/tokens/temp").json()["active"] is False
            r = c.get("/v1/classes")
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert admin.delete("/v1/tokens/temp").status_code == 404
    # revoked from the command line, while the server runs
    extra = make_token(secured.tokens_path, "cli-made", "viewer")
    with secured.client(extra) as c:
        assert c.get("/v1/classes").status_code == 200
        proc = subprocess.run([sys.executable, "-m", "metaedge", "token", "revoke", "cli-made", "--tokens",
                               str(secured.tokens_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert c.get("/v1/classes").status_code == 401


def test_the_token_store_holds_only_hashes(secured):
    text = open(secured.tokens_path).read()
    for token in secured.tokens.values():
        secret = token[len("me_") + 12 + 1:]  # (the secret may itself contain '_')
        assert token not in text and secret not in text
    assert oct(os.stat(secured.tokens_path).st_mode & 0o777) == "0o600"


def test_request_size_pixel_and_count_limits(secured, objects):
    with secured.client(secured.tokens["operator"]) as c:
        big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8)
        data = png(big)
        assert len(data) > 0.25 * 1024 * 1024
        r = post_image(c, "/v1/predict", data)
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for i in range(0, len(data), 65536):
                yield data[i:i + 65536]
        r = c.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        flat = png(np.zeros((310, 310, 3), np.uint8))  # small file, too many pixels (PNG compresses zeros)
        assert len(flat) < 0.25 * 1024 * 1024
        r = post_image(c, "/v1/classes/flat/shots", flat)
        assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
        assert "96,100 pixels" in r.json()["message"]
        assert "flat" not in [x["label"] for x in c.get("/v1/classes").json()["classes"]]
        five = [("image", (f"{i}.png", image(objects, "shape0-r", i), "image/png")) for i in range(5)]
        r = c.post("/v1/predict", files=five)
        assert r.status_code == 413 and r.json()["error"] == "too_many_images"
        raw = np.zeros((400, 400, 3), np.uint8)
        r = c.post("/v1/predict", params={"width": 400, "height": 400, "pixel_format": "rgb"},
                   content=raw.tobytes()[:200 * 1024], headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"
        text = c.get("/metrics").text
        assert 'metaedge_errors_total{kind="too_large"} 2.0' in text


def test_rate_limit_per_token_across_workers(bundle, tmp_path, objects):
    tokens = tmp_path / "tokens.json"
    fast, other = make_token(tokens, "fast", "viewer"), make_token(tokens, "other", "viewer")
    with Server(bundle, tmp_path / "g.metaedge", "--rate-limit", "1/m:5", "--workers", "2", "--read-only",
                "--no-access-log", tokens=tokens, workdir=tmp_path) as server:
        pids = set()
        for _ in range(20):
            with server.client() as c:
                pids.add(c.get("/readyz").json()["pid"])
        assert len(pids) == 2  # two workers take connections
        codes = []
        for _ in range(16):  # a new connection each time: the requests spread over the workers
            with server.client(fast) as c:
                r = c.get("/v1/info")
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert codes.count(200) == 5 and codes.count(429) == 11, codes  # one budget (burst 5) for both workers
        with server.client(other) as c:
            assert c.get("/v1/info").status_code == 200  # the limit is per token
        with server.client(fast) as c:
            assert c.get("/healthz").status_code == 200  # health checks are never limited


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metaedge test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_with_a_self_signed_certificate(bundle, tmp_path, objects):
    pytest.importorskip("cryptography")
    certfile, keyfile = _self_signed(tmp_path)
    tokens = tmp_path / "tokens.json"
    operator = make_token(tokens, "otto", "operator")
    with Server(bundle, tmp_path / "g.metaedge", "--certfile", certfile, "--keyfile", keyfile, tokens=tokens,
                workdir=tmp_path) as server:
        assert server.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(certfile)),
                          headers={"Authorization": f"Bearer {operator}"}) as c:
            assert post_image(c, "/v1/classes/red/shots", image(objects)).status_code == 201
            assert c.get("/v1/info").json()["server"]["tls"] is True
        with pytest.raises(httpx.ConnectError):  # the certificate is checked (no trust without verify=cert)
            httpx.get(server.url + "/healthz")
        plain = server.url.replace("https://", "http://")
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(plain + "/healthz", timeout=5)


def test_tls_files_that_do_not_load_are_refused(bundle, tmp_path):
    (tmp_path / "bad.pem").write_text("not a certificate")
    s = Server(bundle, tmp_path / "g.metaedge", "--certfile", tmp_path / "bad.pem", "--keyfile", tmp_path / "bad.pem",
               workdir=tmp_path, expect_start=False)
    assert s.wait() == 2 and "cannot load the certificate" in s.stderr


def test_read_only_and_keep_shots(bundle, tmp_path, objects):
    keep = tmp_path / "kept"
    data = image(objects)
    with Server(bundle, tmp_path / "g.metaedge", "--keep-shots", keep, workdir=tmp_path / "a") as server:
        with server.client() as c:
            assert post_image(c, "/v1/classes/red bolt/shots", data).json()["kept"] == 1
            frame = np.zeros((8, 8, 3), np.uint8)
            r = c.post("/v1/classes/red bolt/shots", params={"width": 8, "height": 8, "pixel_format": "bgr"},
                       content=frame.tobytes(), headers={"Content-Type": "application/octet-stream"})
            assert r.json()["kept"] == 1
    files = sorted(os.listdir(keep / "red bolt"))
    assert len(files) == 2 and files[0].endswith(".png") and "anonymous@127.0.0.1" in files[0]
    assert (keep / "red bolt" / files[0]).read_bytes() == data
    with Server(bundle, tmp_path / "g.metaedge", "--read-only", workdir=tmp_path / "b") as server:
        with server.client() as c:
            r = post_image(c, "/v1/classes/blue/shots", data)
            assert r.status_code == 403 and r.json()["error"] == "read_only"
            assert c.delete("/v1/classes/red bolt").json()["error"] == "read_only"
            assert post_image(c, "/v1/predict", data).json()["predictions"][0]["label"] == "red bolt"


def test_other_machines_need_tokens_or_insecure(bundle, tmp_path):
    s = Server(bundle, tmp_path / "g.metaedge", "--host", "0.0.0.0", workdir=tmp_path, expect_start=False)
    assert s.wait() == 2
    assert "no token store" in s.stderr and "--insecure" in s.stderr
    from metaedge.runtime.serve.config import ServeConfig
    from metaedge.runtime.serve.server import check_config
    check_config(ServeConfig(bundle, str(tmp_path / "g"), host="0.0.0.0", tokens=None, insecure=True))
    tokens = tmp_path / "tokens.json"
    make_token(tokens, "x", "viewer")
    check_config(ServeConfig(bundle, str(tmp_path / "g"), host="0.0.0.0", tokens=str(tokens)))


def test_first_token_turns_access_control_on(bundle, tmp_path):
    tokens = tmp_path / "tokens.json"  # does not exist yet: no access control (loopback)
    with Server(bundle, tmp_path / "g.metaedge", tokens=tokens, workdir=tmp_path) as server:
        with server.client() as c:
            assert c.get("/v1/info").json()["server"]["access_control"] is False
            made = c.post("/v1/tokens", json={"name": "first", "role": "admin"})
            assert made.status_code == 201
            assert c.get("/v1/info").status_code == 401
        with server.client(made.json()["token"]) as c:
            assert c.get("/v1/info").json()["you"]["name"] == "first"
