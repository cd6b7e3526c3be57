"""A local OpenID Connect provider, and a GitHub-style OAuth 2.0 one, for the dashboard's login
tests (tests/it/dashboard.rs).

Built on authlib's authorization server (authorization code grant, the OpenID Connect `OpenIDCode`
extension, PKCE `CodeChallenge` required), served over HTTPS by werkzeug on 127.0.0.1 with the
certificate the test made. Nothing of the protocol is written here: authlib checks the client,
the redirect URI (exactly the registered one), the code (single use) and the PKCE verifier, and
issues the ID token.

The GitHub-style side (same server, same authlib grant without the OpenID Connect extension):
`/login/oauth/authorize`, `/login/oauth/access_token` (JSON answer), and the API GitHub logins
read, `/api/user` and `/api/user/emails`, which take the access token as a bearer token (authlib's
`ResourceProtector`).

Test controls (plain HTTP calls from the test, over the same HTTPS listener):
- POST /test/user {"email": ..., "verified": bool, "sub": ...}: who the next authorization
  logs in as (the provider approves at once, as if the user had consented); on the GitHub side
  that email is the primary one, and a second, verified address `other-<sub>@example.org` is
  listed too;
- POST /test/tamper {"what": "iss" | "aud" | "nonce" | "exp" | "sig" | "at_hash"}: the next ID
  token is re-signed with that claim wrong (or, for "sig", signed by another key under the
  same key id).

Usage: oidc_provider.py CERT KEY CLIENT_ID CLIENT_SECRET REDIRECT_URI...; prints "PORT <n>" once
it listens. Every redirect URI given is registered (exact match).
"""

import hmac
import json
import ssl
import sys
import time
import uuid
import zlib

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core import grants as oidc_grants
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

CERT, KEY, CLIENT_ID, CLIENT_SECRET = sys.argv[1:5]
REDIRECT_URIS = sys.argv[5:]

SIGNING = JsonWebKey.generate_key("RSA", 2048, is_private=True)
SIGNING_KID = "test-key-1"
OTHER = JsonWebKey.generate_key("RSA", 2048, is_private=True)

STATE = {
    "issuer": None,
    "user": {"sub": "alice-1", "email": "alice@example.com", "verified": True},
    "tamper": None,
}
CODES = {}
TOKENS = {}


class Client(ClientMixin):
    def get_client_id(self):
        return CLIENT_ID

    def get_default_redirect_uri(self):
        return REDIRECT_URIS[0]

    def get_allowed_scope(self, scope):
        allowed = ("openid", "email", "profile", "read:user", "user:email")
        return " ".join(s for s in (scope or "").split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in REDIRECT_URIS

    def check_client_secret(self, client_secret):
        return hmac.compare_digest(client_secret.encode(), CLIENT_SECRET.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type == "authorization_code"


CLIENT = Client()


class Code(AuthorizationCodeMixin):
    def __init__(self, **fields):
        self.__dict__.update(fields)

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time

    def get_acr(self):
        return None

    def get_amr(self):
        return None

    def is_expired(self):
        return time.time() > self.auth_time + 300


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def save_authorization_code(self, code, req):
        payload = req.payload
        CODES[code] = Code(
            code=code,
            client_id=payload.client_id,
            redirect_uri=payload.redirect_uri,
            scope=payload.scope,
            user=dict(req.user),
            nonce=payload.data.get("nonce"),
            code_challenge=payload.data.get("code_challenge"),
            code_challenge_method=payload.data.get("code_challenge_method"),
            auth_time=int(time.time()),
        )

    def query_authorization_code(self, code, client):
        item = CODES.get(code)
        if item and item.client_id == client.get_client_id() and not item.is_expired():
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return authorization_code.user


class OpenIDCode(oidc_grants.OpenIDCode):
    def exists_nonce(self, nonce, req):
        return any(c.nonce == nonce for c in CODES.values() if c.code != req.payload.data.get("code"))

    def get_jwt_config(self, grant):
        return {
            "key": dict(SIGNING.as_dict(is_private=True), kid=SIGNING_KID),
            "alg": "RS256",
            "iss": STATE["issuer"],
            "exp": 300,
        }

    def generate_user_info(self, user, scope):
        return UserInfo(sub=user["sub"], email=user["email"], email_verified=user["verified"])


class Token(TokenMixin):
    def __init__(self, token, user):
        self.token = token
        self.user = user
        self.issued = time.time()

    def check_client(self, client):
        return client.get_client_id() == CLIENT_ID

    def get_scope(self):
        return self.token.get("scope", "")

    def get_expires_in(self):
        return self.token.get("expires_in", 3600)

    def is_expired(self):
        return time.time() > self.issued + self.get_expires_in()

    def is_revoked(self):
        return False


def save_token(token, req):
    TOKENS[token["access_token"]] = Token(token, dict(req.user))


class Validator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        return TOKENS.get(token_string)


app = Flask(__name__)
server = AuthorizationServer(
    app,
    query_client=lambda client_id: CLIENT if client_id == CLIENT_ID else None,
    save_token=save_token,
)
require_token = ResourceProtector()
require_token.register_token_validator(Validator())
server.register_grant(CodeGrant, [OpenIDCode(require_nonce=True), CodeChallenge(required=True)])


@app.get("/.well-known/openid-configuration")
def discovery():
    issuer = STATE["issuer"]
    return jsonify(
        issuer=issuer,
        authorization_endpoint=issuer + "/authorize",
        token_endpoint=issuer + "/token",
        jwks_uri=issuer + "/jwks",
        response_types_supported=["code"],
        subject_types_supported=["public"],
        id_token_signing_alg_values_supported=["RS256"],
        scopes_supported=["openid", "email"],
        token_endpoint_auth_methods_supported=["client_secret_basic", "client_secret_post"],
        code_challenge_methods_supported=["S256"],
    )


@app.get("/jwks")
def jwks():
    return jsonify(keys=[dict(SIGNING.as_dict(is_private=False), kid=SIGNING_KID, use="sig", alg="RS256")])


@app.get("/authorize")
def authorize():
    # The user approves at once (the test chose who with /test/user).
    return server.create_authorization_response(grant_user=dict(STATE["user"]))


@app.post("/token")
def token():
    response = server.create_token_response()
    what = STATE["tamper"]
    if what and response.status_code == 200:
        STATE["tamper"] = None
        body = json.loads(response.get_data())
        public = dict(SIGNING.as_dict(is_private=False), kid=SIGNING_KID)
        claims = dict(jwt.decode(body["id_token"], public))
        key = dict(SIGNING.as_dict(is_private=True), kid=SIGNING_KID)
        if what == "iss":
            claims["iss"] = "https://evil.example"
        elif what == "aud":
            claims["aud"] = "someone-else"
        elif what == "nonce":
            claims["nonce"] = "not-the-nonce"
        elif what == "exp":
            claims["iat"] = int(time.time()) - 7200
            claims["exp"] = int(time.time()) - 3600
        elif what == "at_hash":
            claims["at_hash"] = "AAAAAAAAAAAAAAAAAAAAAA"
        elif what == "sig":
            key = dict(OTHER.as_dict(is_private=True), kid=SIGNING_KID)
        else:
            return jsonify(error="unknown tamper mode"), 500
        body["id_token"] = jwt.encode({"alg": "RS256", "kid": SIGNING_KID}, claims, key).decode()
        response.set_data(json.dumps(body))
    return response


@app.get("/login/oauth/authorize")
def github_authorize():
    return server.create_authorization_response(grant_user=dict(STATE["user"]))


@app.post("/login/oauth/access_token")
def github_token():
    return server.create_token_response()


@app.get("/api/user")
@require_token()
def github_user():
    user = current_token.user
    return jsonify(id=zlib.crc32(user["sub"].encode()), login=user["sub"])


@app.get("/api/user/emails")
@require_token()
def github_emails():
    user = current_token.user
    return jsonify(
        [
            {"email": user["email"], "primary": True, "verified": user["verified"], "visibility": "private"},
            {"email": f"other-{user['sub']}@example.org", "primary": False, "verified": True, "visibility": None},
        ]
    )


@app.post("/test/user")
def set_user():
    data = request.get_json()
    STATE["user"] = {
        "sub": data.get("sub") or str(uuid.uuid4()),
        "email": data["email"],
        "verified": bool(data.get("verified", True)),
    }
    return jsonify(ok=True)


@app.post("/test/tamper")
def set_tamper():
    STATE["tamper"] = request.get_json()["what"]
    return jsonify(ok=True)


def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    http = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=context)
    STATE["issuer"] = f"https://localhost:{http.server_port}"
    print(f"PORT {http.server_port}", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
