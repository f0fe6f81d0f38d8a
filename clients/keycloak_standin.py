"""A loopback stand-in for the Keycloak realm that vantage6 5.x (HQ and its nodes) talks to.

It answers exactly the calls vantage6 5.0.3 makes (docs/vantage6-5x-socket.md §8):

* ``GET /realms/{realm}``: the realm's RSA public key (``public_key``: base64 DER
  SubjectPublicKeyInfo, no PEM armour), read by HQ at start-up, by python-keycloak when a node
  validates its token and by v6-socketio (``KEYCLOAK_URL``/``KEYCLOAK_REALM``);
* ``POST /realms/{realm}/protocol/openid-connect/token``: the client-credentials grant of a
  registered client (a node's ``<name>-node-client``, HQ's admin client), answering a
  Keycloak-layout RS256 access token (``sub`` = the client's service-account user id,
  ``vantage6_client_type`` from the client's hard-coded claim mapper) and ``expires_in``;
* the admin API HQ uses under ``/admin/realms/{realm}``: ``users`` (look up by exact,
  lower-cased username; create; get; update; delete), ``clients`` (create, answering 201 with a
  ``Location``; delete) and ``clients/{id}/client-secret`` (get; regenerate).

Beyond Keycloak, for tests: ``rotate_key()`` replaces the realm key (what a Keycloak key rotation
does), ``mint()`` signs any claims with the current (or another) key, and ``calls`` records every
request as ``(method, path)`` (``answered``: with the status it got). Every request is also printed
to stderr when ``verbose``.

Standard library plus PyJWT and cryptography (both in the vantage6 5.x virtualenv). Run it in a
thread (``with KeycloakStandIn() as kc: ...``) or as a process::

    python keycloak_standin.py --port 0 --admin-user admin \\
        --admin-client backend-admin-client --admin-secret s

which prints one JSON line ``{"url": ..., "realm": ...}`` when it listens; the test-only endpoints
``POST /_standin/rotate`` and ``POST /_standin/mint`` (JSON claims, optional ``"alg"``) and
``GET /_standin/calls`` drive it from another process.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_LIFETIME = 300  # Keycloak's default access-token lifespan, seconds


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_b64(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def public_key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class _Client:
    def __init__(self, client_id: str, secret: str, user_id: str, client_type: str | None):
        self.uuid = str(uuid.uuid4())
        self.client_id = client_id
        self.secret = secret
        self.user_id = user_id  # the service-account user: the token's `sub`
        self.client_type = client_type  # the hard-coded `vantage6_client_type` claim


class KeycloakStandIn:
    """The realm ``realm`` on ``http://127.0.0.1:<port>``; see the module docs."""

    def __init__(
        self,
        realm: str = "vantage6",
        port: int = 0,
        *,
        admin_user: str = "admin",
        admin_client: str = "backend-admin-client",
        admin_secret: str = "admin-client-secret",
        lifetime: int = DEFAULT_LIFETIME,
        verbose: bool = False,
    ):
        self.realm = realm
        self.lifetime = lifetime
        self.verbose = verbose
        self.key = new_rsa_key()
        self.calls: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str, int]] = []  # (method, path, status), in order
        self._lock = threading.Lock()
        self.users: dict[str, dict] = {}  # id -> Keycloak user representation
        self.clients: dict[str, _Client] = {}  # uuid -> client
        self.admin_user_id = self.add_user(admin_user)
        self.add_client(admin_client, admin_secret, client_type="user", user_id=self.admin_user_id)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """``KEYCLOAK_URL``: bare scheme://host:port, as python-keycloak needs it."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "KeycloakStandIn":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="keycloak-standin",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "KeycloakStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- realm state ------------------------------------------------------------------------
    def add_user(self, username: str, attributes: dict | None = None) -> str:
        user_id = str(uuid.uuid4())
        with self._lock:
            self.users[user_id] = {
                "id": user_id,
                "username": username.lower(),  # Keycloak stores usernames lower-cased
                "enabled": True,
                "attributes": attributes or {},
            }
        return user_id

    def add_client(self, client_id: str, secret: str | None = None, *, client_type: str | None,
                   user_id: str | None = None) -> _Client:
        """A confidential client with a service account (its user is created unless given)."""
        if user_id is None:
            user_id = self.add_user(f"service-account-{client_id}")
        client = _Client(client_id, secret or uuid.uuid4().hex, user_id, client_type)
        with self._lock:
            self.clients[client.uuid] = client
        return client

    def client(self, client_id: str) -> _Client | None:
        with self._lock:
            return next((c for c in self.clients.values() if c.client_id == client_id), None)

    def rotate_key(self) -> None:
        """A Keycloak key rotation: tokens signed before no longer verify with the realm key."""
        self.key = new_rsa_key()

    def public_key(self) -> str:
        return public_key_b64(self.key)

    def mint(self, claims: dict | None = None, *, sub: str | None = None, alg: str = "RS256",
             key=None, lifetime: int | None = None, client_type: str | None = "node") -> str:
        """A token in Keycloak's access-token layout, signed with the realm key unless ``key``
        (another RSA key, or an HS256 secret string) is given; ``claims`` override the defaults."""
        now = int(time.time())
        body = {
            "exp": now + (self.lifetime if lifetime is None else lifetime),
            "iat": now,
            "jti": str(uuid.uuid4()),
            "iss": f"{self.url}/realms/{self.realm}",
            "aud": "account",
            "sub": sub,
            "typ": "Bearer",
            "azp": "standin",
            "scope": "openid profile email",
        }
        if client_type is not None:
            body["vantage6_client_type"] = client_type
        body.update(claims or {})
        signing_key = self.key if key is None else key
        return jwt.encode(body, signing_key, algorithm=alg)

    # -- HTTP -------------------------------------------------------------------------------
    def _handler_class(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # noqa: D401 - BaseHTTPRequestHandler API
                if standin.verbose:
                    sys.stderr.write("keycloak-standin: " + fmt % args + "\n")

            def _route(self, method: str):
                parts = urlsplit(self.path)
                with standin._lock:
                    standin.calls.append((method, parts.path))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    status, body, headers = standin._dispatch(method, parts.path,
                                                              parse_qs(parts.query), raw,
                                                              self.headers)
                except Exception as exc:  # a stand-in bug must show, not hang the client
                    status, body, headers = 500, {"error": repr(exc)}, {}
                with standin._lock:
                    standin.answered.append((method, parts.path, status))
                payload = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler

    def _dispatch(self, method, path, query, raw, headers):
        realm = f"/realms/{self.realm}"
        admin = f"/admin/realms/{self.realm}"
        if method == "GET" and path == realm:
            return 200, {"realm": self.realm, "public_key": self.public_key(),
                         "token-service": f"{self.url}{realm}/protocol/openid-connect",
                         "account-service": f"{self.url}{realm}/account",
                         "tokens-not-before": 0}, {}
        if method == "POST" and path == f"{realm}/protocol/openid-connect/token":
            return self._token(parse_qs(raw.decode()))
        if path.startswith("/_standin/"):
            return self._test_endpoint(method, path, raw)
        if not path.startswith(admin + "/"):
            return 404, {"error": "unknown endpoint"}, {}
        if not self._admin_authorised(headers):
            return 401, {"error": "HTTP 401 Unauthorized"}, {}
        rest = path[len(admin) + 1:].split("/")
        body = json.loads(raw) if raw else None
        if rest[0] == "users":
            return self._users(method, rest[1:], query, body)
        if rest[0] == "clients":
            return self._clients(method, rest[1:], body)
        return 404, {"error": "unknown admin endpoint"}, {}

    def _token(self, form):
        one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        if one("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}, {}
        client = self.client(one("client_id"))
        if client is None or client.secret != one("client_secret"):
            return 401, {"error": "unauthorized_client",
                         "error_description": "Invalid client or Invalid client credentials"}, {}
        token = self.mint(sub=client.user_id, client_type=client.client_type,
                          claims={"azp": client.client_id, "client_id": client.client_id,
                                  "preferred_username": f"service-account-{client.client_id}"})
        return 200, {"access_token": token, "expires_in": self.lifetime,
                     "refresh_expires_in": 0, "token_type": "Bearer", "not-before-policy": 0,
                     "scope": "openid profile email"}, {}

    def _admin_authorised(self, headers) -> bool:
        value = headers.get("Authorization") or ""
        if not value.startswith("Bearer "):
            return False
        try:
            jwt.decode(value[len("Bearer "):], self.key.public_key(), algorithms=["RS256"],
                       options={"verify_aud": False})
        except jwt.PyJWTError:
            return False
        return True

    def _users(self, method, rest, query, body):
        if not rest and method == "GET":
            wanted = (query.get("username") or [""])[0].lower()
            with self._lock:
                found = [u for u in self.users.values() if u["username"] == wanted]
            return 200, found[: int((query.get("max") or ["100"])[0])], {}
        if not rest and method == "POST":
            user_id = self.add_user(body["username"], body.get("attributes"))
            return 201, None, {"Location": f"{self.url}/admin/realms/{self.realm}/users/{user_id}"}
        with self._lock:
            user = self.users.get(rest[0])
        if user is None:
            return 404, {"error": "User not found"}, {}
        if method == "GET":
            return 200, user, {}
        if method == "PUT":
            with self._lock:
                user.update({k: v for k, v in body.items() if k != "id"})
            return 204, None, {}
        if method == "DELETE":
            with self._lock:
                self.users.pop(rest[0], None)
            return 204, None, {}
        return 405, {"error": "method not allowed"}, {}

    def _clients(self, method, rest, body):
        if not rest and method == "POST":
            client_type = None
            for mapper in body.get("protocolMappers") or []:
                config = mapper.get("config") or {}
                if config.get("claim.name") == "vantage6_client_type":
                    client_type = config.get("claim.value")
            client = self.add_client(body["clientId"], client_type=client_type)
            return 201, None, {
                "Location": f"{self.url}/admin/realms/{self.realm}/clients/{client.uuid}"}
        with self._lock:
            client = self.clients.get(rest[0])
        if client is None:
            return 404, {"error": "Could not find client"}, {}
        if rest[1:] == ["client-secret"]:
            if method == "POST":
                client.secret = uuid.uuid4().hex
            return 200, {"type": "secret", "value": client.secret}, {}
        if not rest[1:] and method == "DELETE":
            with self._lock:
                self.clients.pop(client.uuid, None)
                self.users.pop(client.user_id, None)
            return 204, None, {}
        if not rest[1:] and method == "GET":
            return 200, {"id": client.uuid, "clientId": client.client_id}, {}
        return 405, {"error": "method not allowed"}, {}

    def _test_endpoint(self, method, path, raw):
        if method == "POST" and path == "/_standin/rotate":
            self.rotate_key()
            return 200, {"public_key": self.public_key()}, {}
        if method == "POST" and path == "/_standin/mint":
            claims = json.loads(raw) if raw else {}
            alg = claims.pop("alg", "RS256")
            return 200, {"token": self.mint(claims, alg=alg, client_type=None)}, {}
        if method == "GET" and path == "/_standin/calls":
            with self._lock:
                return 200, [list(c) for c in self.calls], {}
        return 404, {"error": "unknown test endpoint"}, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--realm", default="vantage6")
    parser.add_argument("--admin-user", default="admin")
    parser.add_argument("--admin-client", default="backend-admin-client")
    parser.add_argument("--admin-secret", default="admin-client-secret")
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    standin = KeycloakStandIn(args.realm, args.port, admin_user=args.admin_user,
                              admin_client=args.admin_client, admin_secret=args.admin_secret,
                              lifetime=args.lifetime, verbose=args.verbose)
    print(json.dumps({"url": standin.url, "realm": standin.realm}), flush=True)
    try:
        standin._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
