"""Shared by the fault suite's scripts (Python 3.11, standard library only): HTTP without
redirects (with a cookie jar when asked), psql, the sandbox CRM's API with retries and token
refresh, and the OAuth dances a person does in the browser (Ferry's Connect button, the
sandbox's consent page) or an admin's script does (a grant of its own).
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def now() -> float:
    return time.time()


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


class Answer:
    """An HTTP answer; status 0 when no answer came (refused, reset, timed out)."""

    def __init__(self, status: int, headers: dict, body: bytes, error: str = ""):
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error

    def json(self):
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return ""

    def __repr__(self) -> str:
        return f"<{self.status} {self.error or self.text()[:200]}>"


class Http:
    """A client that never follows redirects; with `cookies`, it keeps a cookie jar."""

    def __init__(self, cookies: bool = False, timeout: float = 30.0):
        handlers: list = [_NoRedirect()]
        if cookies:
            self.jar = http.cookiejar.CookieJar()
            handlers.append(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener = urllib.request.build_opener(*handlers)
        self.timeout = timeout

    def request(self, method: str, url: str, body=None, form=None, headers=None) -> Answer:
        headers = dict(headers or {})
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as err:
            try:
                payload = err.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            return Answer(err.code, dict(err.headers or {}), payload)
        except (urllib.error.URLError, OSError, http.client.HTTPException, socket.timeout) as err:
            return Answer(0, {}, b"", error=f"{type(err).__name__}: {err}")

    def get(self, url: str, **kw) -> Answer:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw) -> Answer:
        return self.request("POST", url, **kw)


# ---------------------------------------------------------------------------------------------
# Postgres through psql (no driver needed).


class PsqlError(RuntimeError):
    pass


def psql(url: str, sql: str, timeout: float = 60.0) -> str:
    try:
        done = subprocess.run(
            ["psql", url, "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise PsqlError(f"psql timed out after {timeout}s") from err
    if done.returncode != 0:
        raise PsqlError(done.stderr.strip() or f"psql exited {done.returncode}")
    return done.stdout.strip()


def psql_json(url: str, select: str, timeout: float = 120.0):
    """Rows of `select` as a list of dicts (json_agg of the rows)."""
    out = psql(url, f"SELECT coalesce(json_agg(t), '[]'::json) FROM ({select}) t", timeout)
    return json.loads(out or "[]")


# ---------------------------------------------------------------------------------------------
# The sandbox CRM.

RETRYABLE = {0, 423, 429, 500, 502, 503, 504}


class Crm:
    """The sandbox's API under one access token; retries what a fault or an outage answers."""

    def __init__(self, base: str, grant: dict, oauth: dict | None = None):
        self.base = base.rstrip("/")
        self.access = grant["access_token"]
        self.refresh = grant.get("refresh_token")
        self.oauth = oauth or {}
        self.http = Http(timeout=60)
        self.lock = threading.Lock()
        self.retries = 0

    def _refresh(self) -> None:
        with self.lock:
            if not self.refresh:
                return
            answer = self.http.post(
                f"{self.base}/oauth/v1/token",
                form={
                    "grant_type": "refresh_token",
                    "client_id": self.oauth.get("client_id", ""),
                    "client_secret": self.oauth.get("client_secret", ""),
                    "refresh_token": self.refresh,
                },
            )
            if answer.status == 200:
                self.access = answer.json()["access_token"]

    def call(self, method: str, path: str, body=None, deadline: float = 120.0) -> Answer:
        """Retries 0/423/429/5xx (the sandbox decides faults before it acts, so a retry never
        doubles a write) until `deadline` seconds have passed."""
        end = now() + deadline
        delay = 0.2
        refreshed = False
        while True:
            answer = self.http.request(
                method,
                f"{self.base}{path}",
                body=body,
                headers={"Authorization": f"Bearer {self.access}"},
            )
            if answer.status == 401 and not refreshed:
                refreshed = True
                self._refresh()
                continue
            if answer.status not in RETRYABLE or now() >= end:
                return answer
            self.retries += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    def all(self, object_: str, properties: list[str]) -> dict:
        """Every live record of `object_`: id -> properties."""
        out: dict = {}
        after = None
        props = ",".join(properties)
        while True:
            path = f"/crm/v3/objects/{object_}?limit=100&properties={props}"
            if after:
                path += f"&after={after}"
            answer = self.call("GET", path)
            if answer.status != 200:
                raise RuntimeError(f"listing {object_} answered {answer!r}")
            page = answer.json()
            for record in page.get("results", []):
                out[str(record["id"])] = record.get("properties") or {}
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return out


def consent_id(html: str) -> str:
    match = re.search(r'name="consent" value="([^"]*)"', html)
    if not match:
        raise RuntimeError("no consent id on the sandbox's consent page")
    return match.group(1)


def crm_grant(
    crm: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    portal: int,
    scopes: str = "crm.objects.contacts.read crm.objects.contacts.write "
    "crm.objects.deals.read crm.objects.deals.write",
) -> dict:
    """A grant of our own for `portal` (what an admin editing records in the CRM would use):
    the consent page, Allow, and the code exchanged for tokens."""
    http_ = Http()
    query = urllib.parse.urlencode(
        {"client_id": client_id, "redirect_uri": redirect_uri, "scope": scopes, "state": "fault-suite"}
    )
    page = http_.get(f"{crm}/oauth/authorize?{query}")
    if page.status != 200:
        raise RuntimeError(f"consent page answered {page!r}")
    back = http_.post(
        f"{crm}/oauth/authorize",
        form={"consent": consent_id(page.text()), "portal": str(portal), "decision": "allow"},
        headers={"Origin": crm},
    )
    location = back.header("Location")
    code = urllib.parse.parse_qs(urllib.parse.urlparse(location).query).get("code", [""])[0]
    if not code:
        raise RuntimeError(f"no code in the consent's redirect: {location!r} ({back!r})")
    token = http_.post(
        f"{crm}/oauth/2026-03/token",
        form={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uri": redirect_uri,
            "code": code,
        },
    )
    if token.status != 200:
        raise RuntimeError(f"token exchange answered {token!r}")
    return token.json()


def crm_from_env(crm_url: str, portal: int) -> Crm:
    """A CRM client with a grant of its own, from the sandbox's OAuth variables."""
    oauth = {
        "client_id": os.environ.get("FERRY_SANDBOX_CLIENT_ID", "ferry-sandbox-client"),
        "client_secret": os.environ.get("FERRY_SANDBOX_CLIENT_SECRET", "ferry-sandbox-secret-change-me"),
    }
    redirect = os.environ.get(
        "FERRY_SANDBOX_REDIRECT_URIS", "http://127.0.0.1:8080/oauth/callback/hubspot"
    ).split(",")[0]
    grant = crm_grant(crm_url, oauth["client_id"], oauth["client_secret"], redirect, portal)
    return Crm(crm_url, grant, oauth)


# ---------------------------------------------------------------------------------------------
# Ferry's pages, as a person uses them.


def csrf_of(browser: Http, url: str) -> str:
    page = browser.get(url, headers={"Accept": "text/html"})
    match = re.search(r'name="csrf_token" value="([^"]*)"', page.text())
    if not match:
        raise RuntimeError(f"no csrf token on {url} ({page.status})")
    return match.group(1)


def login(base: str, email: str, password: str) -> Http:
    browser = Http(cookies=True)
    token = csrf_of(browser, f"{base}/login")
    answer = browser.post(
        f"{base}/login",
        form={"email": email, "password": password, "csrf_token": token},
        headers={"Origin": base, "Accept": "text/html"},
    )
    if answer.status != 303:
        raise RuntimeError(f"login answered {answer!r}")
    return browser


def connect_sandbox(browser: Http, base: str, crm: str, portal: int) -> str:
    """Ferry's Connect button, the sandbox's consent page, Allow, and Ferry's callback.
    Returns the connection's id."""
    token = csrf_of(browser, f"{base}/connections")
    start = browser.post(
        f"{base}/connections/new/hubspot-sandbox",
        form={"csrf_token": token},
        headers={"Origin": base, "Accept": "text/html"},
    )
    authorize = start.header("Location")
    if not authorize.startswith(crm):
        raise RuntimeError(f"connect did not go to the sandbox: {start!r} {authorize!r}")
    consent = Http().get(authorize)
    decided = Http().post(
        f"{crm}/oauth/authorize",
        form={"consent": consent_id(consent.text()), "portal": str(portal), "decision": "allow"},
        headers={"Origin": crm},
    )
    back = decided.header("Location")
    if not back.startswith(f"{base}/oauth/callback/hubspot"):
        raise RuntimeError(f"consent did not come back to Ferry: {decided!r} {back!r}")
    done = browser.get(back, headers={"Accept": "text/html"})
    location = done.header("Location")
    if done.status != 303 or "/connections/" not in location:
        raise RuntimeError(f"Ferry's callback answered {done!r} {location!r}")
    return location.rsplit("/", 1)[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
