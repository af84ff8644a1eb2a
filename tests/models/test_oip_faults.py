"""HttpModel under faults and with credentials: a proxy in front of scrutiny's OIP ``serve``
fails requests on a schedule (refused connections while it restarts, dropped connections,
timeouts, 429/503 with Retry-After, malformed answers, an answer lost after the model ran).
Each input is counted once, the budget is never exceeded, the server's own count is
explained exactly, and a server that stays down ends in ModelUnavailableError with the
attack's best points; the credential reaches the server and nothing else."""

import json
import pickle
import re
import threading
import time
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.models import HttpModel, ModelUnavailableError, QueryModel, serve
from scrutiny.models.oip import HEADER_LENGTH
from scrutiny.types import ThreatModel

TOKEN = "s3cr3t-t0ken-value"
FAST = {"retries": 3, "backoff": 0.01, "timeout": 0.5, "connect_timeout": 0.5}


class FlakyProxy:
    """Forwards to ``upstream`` except the infer requests (POST, numbered from 0) in ``schedule``.

    Faults: ``("status", code, retry_after)``, ``"drop"`` (close without answering),
    ``("hang", s)`` (answer nothing for s seconds), ``"garbage"`` (200, not JSON), ``"short"``
    (200, a tensor with too few values), ``"badsize"`` (200, a binary answer whose
    ``binary_data_size`` is 4 bytes above the bytes sent), ``"badheader"`` (200, an
    ``Inference-Header-Content-Length`` beyond the body), ``"lost"`` (forwarded, the answer
    dropped), ``("down", s)`` (drop and stop listening for s seconds: connections refused
    meanwhile).
    """

    def __init__(self, upstream: str, schedule: dict | None = None, tls=None) -> None:
        self.tls = tls  # an ssl.SSLContext: serve https
        self.upstream = upstream.split("/v2/")[0]
        self.schedule = dict(schedule or {})
        self.posts = 0
        self.hide: set[str] = set()  # GET paths answered 404
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        self.server = None
        self.port = 0
        self._listen()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/v2/" + upstream.split("/v2/", 1)[1]

    def _listen(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                return

            def _forward(self, method, body=None):  # binary-extension headers both ways
                headers = {k: self.headers[k] for k in ("Content-Type", HEADER_LENGTH)
                           if self.headers.get(k) is not None}
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method=method,
                                             headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        n = r.headers.get(HEADER_LENGTH)
                        return r.status, r.read(), [(HEADER_LENGTH, n)] if n is not None else []
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            def _answer(self, code, data, extra=()):
                self.send_response(code)
                for k, v in extra:
                    self.send_header(k, v)
                if not any(k == HEADER_LENGTH for k, _ in extra):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") in proxy.hide:
                    return self._answer(404, b'{"error": "not found"}')
                self._answer(*self._forward("GET"))

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    fault = proxy.schedule.get(proxy.posts)
                    proxy.posts += 1
                    proxy.auth.append(self.headers.get("Authorization"))
                kind = fault[0] if isinstance(fault, tuple) else fault
                if kind is None:
                    return self._answer(*self._forward("POST", body))
                if kind == "status":
                    extra = [("Retry-After", fault[2])] if fault[2] is not None else []
                    return self._answer(fault[1], b'{"error": "busy"}', extra)
                if kind == "garbage":
                    return self._answer(200, b"{not json")
                if kind == "short":
                    return self._answer(200, json.dumps({"outputs": [
                        {"name": "logits", "shape": [1, 10], "datatype": "FP32", "data": [0.0]}]}).encode())
                if kind in ("badsize", "badheader"):
                    head = json.dumps({"outputs": [{
                        "name": "logits", "shape": [1, 10], "datatype": "FP32",
                        "parameters": {"binary_data_size": 40}}]}).encode()
                    n = len(head) if kind == "badsize" else len(head) + 100
                    return self._answer(200, head + bytes(36), [(HEADER_LENGTH, str(n))])
                if kind == "hang":
                    time.sleep(fault[1])
                elif kind == "lost":
                    self._forward("POST", body)
                elif kind == "down":
                    threading.Thread(target=proxy.outage, args=(fault[1],), daemon=True).start()
                self.close_connection = True  # drop, "hang", "lost", "down": no answer

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outage(self, seconds: float) -> None:
        """Stop listening for ``seconds`` (connections refused), then listen again, same port."""
        self.server.shutdown()
        self.server.server_close()
        time.sleep(seconds)
        if seconds < 60:
            self._listen()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream(digits_model):
    counted = QueryModel(digits_model, output="logits")  # the server's own count
    with serve(counted, name="digits", input_shape=(1, 8, 8)) as server:
        yield server, counted


def test_every_fault_is_retried_and_each_input_counted_once(upstream, digits_model, digits_test):
    server, counted = upstream
    faults = [("status", 503, "0"), "drop", "garbage", ("status", 429, "0"), "short",
              ("hang", 1.0), ("status", 502, None)]
    proxy = FlakyProxy(server.url, {2 * i: f for i, f in enumerate(faults)})  # each retried once
    x = digits_test.x[:12]
    hm = HttpModel(proxy.url, batch_size=4, **FAST)  # three requests a call
    with pytest.warns(RuntimeWarning, match=r"retry 1/3"):
        first = hm.predict(x)   # the first three requests fail once each
        second = hm.predict(x)  # the next three
        third = hm.predict(x)   # the seventh
    for out in (first, second, third):
        assert torch.allclose(out, digits_model(x), atol=1e-5)
    assert (hm.queries, hm.requests, len(hm.retry_log)) == (36, 9, 7)
    assert counted.queries == 36  # every fault happened before the model ran: no input twice
    assert any("Retry-After: 0" in r for r in hm.retry_log)
    assert any("ReadTimeout" in r for r in hm.retry_log) and any("malformed" in r or "holds 1 values"
                                                                 in r for r in hm.retry_log)
    # an answer lost after the model ran: the server computed those inputs twice, scrutiny
    # counts them once (documented in HttpModel's Notes)
    proxy.schedule = {proxy.posts: "lost"}
    with pytest.warns(RuntimeWarning):
        hm.predict(x[:4])
    assert (hm.queries, counted.queries) == (40, 36 + 4 + 4)
    proxy.close()


def test_retry_after_is_honoured_and_capped(upstream, digits_test):
    server, _ = upstream
    proxy = FlakyProxy(server.url, {0: ("status", 429, "1"), 1: ("status", 503, "3600")})
    hm = HttpModel(proxy.url, max_wait=0.2, **{**FAST, "timeout": 2.0})
    x = digits_test.x[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = time.perf_counter()
        hm.predict(x)
        capped = time.perf_counter() - t
        hm = HttpModel(proxy.url, max_wait=5.0, **{**FAST, "timeout": 2.0})
        proxy.schedule = {proxy.posts: ("status", 429, "1")}
        t = time.perf_counter()
        hm.predict(x)
        waited = time.perf_counter() - t
    assert capped < 0.9 and waited >= 1.0, (capped, waited)
    proxy.close()


def test_a_restart_mid_attack_loses_nothing(upstream, digits_test):
    from scrutiny.attacks.blackbox import Square

    server, counted = upstream
    x, y = digits_test.x[:4], digits_test.y[:4]
    attack = Square(max_queries=40)
    threat = ThreatModel("linf", 0.2)
    ref = attack(HttpModel(server.url, budget=200), x, y, threat=threat, seed=0)
    counted.reset()
    proxy = FlakyProxy(server.url, {5: ("down", 0.4)})  # refused connections for 0.4 s
    hm = HttpModel(proxy.url, budget=200, retries=8, backoff=0.05, timeout=2.0)
    with pytest.warns(RuntimeWarning, match="NewConnectionError|refused|RemoteDisconnected"):
        res = attack(hm, x, y, threat=threat, seed=0)
    assert any("Connection refused" in r for r in hm.retry_log), hm.retry_log
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.queries, ref.queries)
    assert hm.queries == int(res.queries.sum()) == int(ref.queries.sum()) <= 200
    assert counted.queries == hm.queries + hm.evaluations  # the dropped request never ran
    proxy.close()


def test_a_server_that_stays_down_stops_the_attack_with_its_best_points(upstream, digits_test):
    from scrutiny.attacks.blackbox import Square

    server, counted = upstream
    x, y = digits_test.x[:4], digits_test.y[:4]
    proxy = FlakyProxy(server.url, {6: ("down", 600)})
    hm = HttpModel(proxy.url, budget=200, retries=2, backoff=0.01, timeout=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ModelUnavailableError, match="did not answer after 3 attempt") as e:
            Square(max_queries=40)(hm, x, y, threat=ThreatModel("linf", 0.2), seed=0)
    part = e.value.partial
    assert part["x_adv"].shape == x.shape and (part["x_adv"] - x).abs().max() <= 0.2 + 1e-6
    assert int(part["queries"].sum()) <= hm.queries <= 200
    assert counted.queries == int(part["queries"].sum()) + len(x)  # + the clean look
    assert len(hm.retry_log) == 2 and "partial" in "".join(e.value.__notes__)


def test_the_token_reaches_the_server_and_nothing_else(upstream, digits_test, tmp_path,
                                                        monkeypatch, recwarn):
    server, _ = upstream
    monkeypatch.setenv("SCRUTINY_TEST_TOKEN", TOKEN)
    proxy = FlakyProxy(server.url, {0: ("status", 503, "0"), 2: "garbage"})
    hm = HttpModel(proxy.url, token_env="SCRUTINY_TEST_TOKEN", **FAST)
    hm.predict(digits_test.x[:2])
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    hf = HttpModel(proxy.url, token_file=f, auth_header="Authorization", **FAST)
    hf.predict(digits_test.x[:2])
    assert proxy.auth == [f"Bearer {TOKEN}"] * 4
    proxy.schedule = {k: ("status", 503, "0") for k in range(proxy.posts, proxy.posts + 9)}
    with pytest.raises(ModelUnavailableError) as e:
        hm.predict(digits_test.x[:2])
    copy = pickle.loads(pickle.dumps(hm))  # the credential is read again, not pickled
    assert copy._headers(True)["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in pickle.dumps(hm).decode("latin-1")
    shown = [repr(hm), str(hm), repr(hf), repr(vars(hm)), str(e.value), repr(e.value),
             *hm.retry_log, *(str(w.message) for w in recwarn)]
    assert len(hm.retry_log) >= 3 and not [s for s in shown if TOKEN in s]
    proxy.close()


def test_credentials_refused_and_bad_settings(upstream, monkeypatch, tmp_path):
    server, _ = upstream
    with pytest.raises(InputError, match="'NOT_SET_ANYWHERE'.*not set"):
        HttpModel(server.url, token_env="NOT_SET_ANYWHERE")
    with pytest.raises(InputError, match="token_file"):
        HttpModel(server.url, token_file=tmp_path / "missing")
    with pytest.raises(InputError, match="not both"):
        HttpModel(server.url, token_env="A", token_file="b")
    with pytest.raises(InputError, match="ca_bundle"):
        HttpModel(server.url, ca_bundle=tmp_path / "missing.pem")
    with pytest.raises(InputError, match="rate_limit"):
        HttpModel(server.url, rate_limit=0)
    with pytest.raises(InputError, match="max_concurrency"):
        HttpModel(server.url, max_concurrency=0)


def test_rate_limit_and_concurrency(upstream, digits_model, digits_test):
    server, counted = upstream
    x = digits_test.x[:40]
    hm = HttpModel(server.url, batch_size=4, rate_limit=40.0)  # 10 requests: >= 9 intervals
    t = time.perf_counter()
    out = hm.predict(x)
    assert time.perf_counter() - t >= 9 / 40 - 0.01
    par = HttpModel(server.url, batch_size=4, max_concurrency=4)
    assert torch.equal(par.predict(x), out) and torch.allclose(out, digits_model(x), atol=1e-5)
    assert (hm.requests, par.requests, counted.queries) == (10, 10, 80)


def _listening(port: int, within: float = 5.0) -> bool:
    import socket

    end = time.monotonic() + within
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def test_the_cli_saves_what_an_outage_left_and_resumes_within_the_budget(upstream, tmp_path,
                                                                          monkeypatch, capsys):
    import numpy as np

    from scrutiny.cli import EXIT_UNAVAILABLE, main

    server, counted = upstream
    for k, v in (("retries", 1), ("backoff", 0.01)):  # give up at once (the CLI's: 5, 0.5 s)
        monkeypatch.setitem(HttpModel.__init__.__kwdefaults__, k, v)
    proxy = FlakyProxy(server.url, {6: ("down", 1.0)})  # the 7th request: down for 1 s
    out = tmp_path / "adv.npz"
    argv = ["attack", "square", "--model", proxy.url, "--n", "4", "--eps", "0.2", "-p",
            "max_queries=40", "--budget", "100", "--out", str(out), "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(argv) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"did not answer.*saved the best points so far "
                                              r"\(unverified\).*rerun the same command", err)
    first = json.loads(out.with_suffix(".json").read_text())
    saved = dict(np.load(out))
    assert (first["status"], first["runs"], first["finished"]) == ("interrupted", 1, 0)
    # the request that met the outage was charged to the budget but never ran
    assert first["queries_total"] == saved["queries"].sum() < first["budget_spent"] <= 100
    assert counted.queries == first["queries_total"] + first["evaluator_queries_total"]
    assert np.abs(saved["x_adv"] - saved["x"]).max() <= 0.2 + 1e-6
    assert _listening(proxy.port)  # the server is back: the same command resumes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(argv) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    final = dict(np.load(out))
    assert (rec["status"], rec["runs"]) == ("complete", 2)
    assert rec["endpoint"]["budget"] == 100 - first["budget_spent"]  # what run 1 left
    assert rec["budget_spent"] == first["budget_spent"] + rec["endpoint"]["queries"] <= 100
    # totals over both runs: per sample, and as the server counted them
    assert rec["queries_total"] == final["queries"].sum() >= first["queries_total"]
    assert (final["queries"] >= saved["queries"]).all()
    assert counted.queries == rec["queries_total"] + rec["evaluator_queries_total"]
    kept = rec["resumed_samples"]  # fooled by the saved points: not attacked again
    assert 0 <= kept <= 4 and rec["success_rate"] >= kept / 4
    proxy.close()


def self_signed(directory):
    """A self-signed certificate for 127.0.0.1 and its key (``cryptography`` or the openssl
    command line; the test is skipped without either)."""
    import datetime
    import ipaddress
    import shutil
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is installed")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                        "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        return cert, key
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now)
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
             ipaddress.ip_address("127.0.0.1"))]), critical=False)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(k.public_key()),
                        critical=False)
         .sign(k, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert, key


def test_tls_is_verified_and_carries_the_token(digits_model, digits_test, tmp_path,
                                               monkeypatch):
    import ssl

    cert, key = self_signed(tmp_path)
    x = digits_test.x[:3]
    with serve(digits_model, name="digits", certfile=cert, keyfile=key) as server:
        assert server.url.startswith("https://127.0.0.1:")
        t = time.perf_counter()
        with pytest.raises(InputError, match=r"certificate verify failed.*ca_bundle="):
            HttpModel(server.url, **FAST).predict(x)  # the system's CAs: refused, not retried
        assert time.perf_counter() - t < 1.0
        hm = HttpModel(server.url, ca_bundle=cert, budget=10)
        assert torch.allclose(hm.predict(x), digits_model(x), atol=1e-5) and hm.queries == 3
        (tmp_path / "other").mkdir()
        other, _ = self_signed(tmp_path / "other")  # a certificate the server's is not
        with pytest.raises(InputError, match=r"certificate verify failed.*check that ca_bundle"):
            HttpModel(server.url, ca_bundle=other, **FAST).metadata()
        # the token travels over TLS: an https proxy in front records what reached it
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        plain = serve(digits_model, name="digits")
        proxy = FlakyProxy(plain.url, tls=tls)
        monkeypatch.setenv("SCRUTINY_TEST_TOKEN", TOKEN)
        hp = HttpModel(proxy.url, ca_bundle=cert, token_env="SCRUTINY_TEST_TOKEN")
        assert proxy.url.startswith("https://") and hp.predict(x).shape == (3, 10)
        assert proxy.auth == [f"Bearer {TOKEN}"] and TOKEN not in repr(hp) + str(hp.usage())
        proxy.close()
        plain.close()
    with pytest.raises(InputError, match="cannot load the certificate"):
        serve(digits_model, certfile=tmp_path / "missing.pem")
