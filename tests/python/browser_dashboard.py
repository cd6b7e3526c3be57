"""Drives the dashboard in headless Chromium (selenium, chromium-driver), through nginx with the
deploy/ config over TLS, for tests/it/dashboard/browser.rs.

Protocol with the Rust test:
1. Binds 127.0.0.1:0 and prints "PORT <n>": the browser's address for nginx. nginx serves TLS on
   a unix socket (as scripts/check-deploy.sh runs it), and this script relays each TCP
   connection to it byte for byte (TLS ends in nginx), so no port is guessed.
2. Reads one JSON line on stdin: {"upstream": "127.0.0.1:<coordinator http port>",
   "cert": ..., "key": ..., "ca": ..., "tenant": ..., "invite": ...}.
3. Writes the nginx config from deploy/nginx/vaultvec.conf (only the listen addresses, the
   certificate paths and the upstream are changed), starts nginx, and drives the browser:
   login page -> OpenID Connect login -> tenants -> overview (charts) -> collections -> API
   keys (create, use it against the API through nginx, revoke) -> members (invite) -> settings
   (notification address and threshold saved) -> audit
   log (verified) -> logout -> GitHub-style login -> logout. Screenshots of each page go to
   the artifacts directory.
4. Prints "RESULT <json>" and exits 0, or prints what failed and exits 1.

The browser trusts the test CA only through --ignore-certificate-errors (headless Chromium has
no simple way to add a CA); the API calls from here verify against the CA.
"""

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import Select, WebDriverWait

# Selenium never downloads a driver (the Debian one is given): nothing leaves loopback.
os.environ["SE_OFFLINE"] = "true"

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = sys.argv[1]


def relay(listener, target):
    """Accepts connections on `listener` for ever, piping each to the unix socket `target`."""

    def pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def nginx_config(work, port, setup):
    conf = open(os.path.join(REPO, "deploy/nginx/vaultvec.conf")).read()
    conf = re.sub(r"^\s*listen \[::\].*\n", "", conf, flags=re.M)
    conf = conf.replace("listen 80;", f"listen unix:{work}/http.sock;")
    conf = conf.replace("listen 443 ssl http2;", f"listen unix:{work}/https.sock ssl http2;")
    conf = conf.replace("listen 8443 ssl http2;", f"listen unix:{work}/grpc.sock ssl http2;")
    conf = conf.replace("/etc/ssl/vaultvec/fullchain.pem", setup["cert"])
    conf = conf.replace("/etc/ssl/vaultvec/privkey.pem", setup["key"])
    conf = conf.replace("http://127.0.0.1:7700", f"http://{setup['upstream']}")
    assert "https.sock" in conf and setup["upstream"] in conf, "the deploy config changed shape"
    with open(os.path.join(work, "vaultvec.conf"), "w") as f:
        f.write(conf)
    main = f"""
user root;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/vaultvec.conf;
}}
"""
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(main)
    return path


class Flow:
    def __init__(self, driver, base, setup, ca):
        self.driver = driver
        self.base = base
        self.setup = setup
        self.ca = ca
        self.shots = []
        # A page that reloads while a condition reads it leaves stale elements: look again.
        self.wait = WebDriverWait(
            driver, 30, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        )

    def shot(self, name):
        path = os.path.join(ARTIFACTS, f"{len(self.shots) + 1:02d}-{name}.png")
        self.driver.save_screenshot(path)
        self.shots.append(os.path.basename(path))

    def open(self, path):
        self.driver.get(self.base + path)

    def find(self, css):
        return self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css):
        self.wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css))).click()

    def text(self, css):
        return self.find(css).text

    def api(self, method, path, key, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ca, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as err:
            return err.code

    def login(self, provider):
        self.open("/dashboard")
        self.shot(f"login-page-{provider}")
        self.click(f"#login-{provider}")
        # The provider approves at once and sends the browser back to the callback, which
        # lands on the list of tenants.
        self.find("a.tenant-link")
        assert self.driver.current_url == self.base + "/dashboard", self.driver.current_url

    def logout(self):
        self.click("#logout")
        self.find("a#login-idp")

    def run(self):
        tenant = self.setup["tenant"]
        result = {}
        self.login("idp")
        self.shot("tenants")
        self.click(f"a.tenant-link[href='/dashboard/t/{tenant}']")
        assert self.text("#tier") == "pro", self.text("#tier")
        charts = self.driver.find_elements(By.CSS_SELECTOR, "img.chart")
        assert len(charts) >= 4, len(charts)
        for chart in charts:
            self.wait.until(lambda d: d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", chart))
        self.shot("overview")

        self.open(f"/dashboard/t/{tenant}/keys")
        self.find("#create-key input[name=label]").send_keys("from the browser")
        for scope in ("write", "manage"):
            self.find(f"#create-key input[value={scope}]").click()
        self.find("#create-key button[type=submit]").click()
        secret = self.text("#new-key-secret")
        assert secret.startswith("vv_"), secret
        self.shot("key-created")
        key_id = secret[3:11]
        result["key_id"] = key_id
        status = self.api("POST", "/v1/collections", secret,
                          {"name": "docs", "dim": 3, "metric": "cosine"})
        assert status == 200, f"creating a collection with the new key: {status}"
        status = self.api("PUT", "/v1/collections/docs/points", secret,
                          {"points": [{"id": 1, "vector": [0.1, 0.2, 0.3]}]})
        assert status == 200, f"writing with the new key: {status}"
        result["api_with_key"] = status

        self.open(f"/dashboard/t/{tenant}/collections")
        row = self.text("#collections tbody tr")
        assert re.match(r"docs\s+3\s+cosine\s+1\s", row), row
        self.shot("collections")

        self.open(f"/dashboard/t/{tenant}/keys")
        self.click(f"#revoke-{key_id}")
        self.wait.until(lambda d: "revoked" in d.find_element(
            By.CSS_SELECTOR, f"tr[data-key='{key_id}'] td.state").text)
        self.shot("key-revoked")
        status = self.api("GET", "/v1/collections", secret)
        assert status == 401, f"a revoked key still works: {status}"
        result["api_after_revoke"] = status

        self.open(f"/dashboard/t/{tenant}/members")
        self.find("#invite-member input[name=email]").send_keys(self.setup["invite"])
        Select(self.find("#invite-member select[name=role]")).select_by_value("member")
        self.find("#invite-member button[type=submit]").click()
        self.find(f"tr[data-member='{self.setup['invite']}']")
        self.shot("members")

        self.open(f"/dashboard/t/{tenant}/settings")
        emails = self.find("#settings textarea[name=emails]")
        emails.clear()
        emails.send_keys("billing@example.com")
        threshold = self.find("#settings input[name=threshold]")
        threshold.clear()
        threshold.send_keys("12")
        self.find("#settings button[type=submit]").click()
        self.wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#settings input[name=threshold]")
            .get_attribute("value") == "12"
        )
        assert "billing@example.com" in self.find("#settings textarea[name=emails]").get_attribute("value")
        self.shot("settings")
        result["settings_saved"] = True

        self.open(f"/dashboard/t/{tenant}/audit")
        status = self.text("#chain-status")
        assert "The chain verifies" in status, status
        assert "key.revoke" in self.text("#audit"), "the revocation is not in the audit log"
        self.shot("audit")
        result["audit_verified"] = True

        self.logout()
        self.shot("logged-out")
        self.open(f"/dashboard/t/{tenant}")
        body = self.driver.find_element(By.TAG_NAME, "body").text
        assert "log in" in body.lower(), body

        self.login("github")
        self.shot("tenants-github")
        self.logout()

        # The pages ran under the Content-Security-Policy without a single violation.
        violations = [entry["message"] for entry in self.driver.get_log("browser")
                      if "Content Security Policy" in entry["message"]]
        assert not violations, violations
        result["screenshots"] = self.shots
        return result


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    print(f"PORT {port}", flush=True)
    setup = json.loads(sys.stdin.readline())
    work = tempfile.mkdtemp(prefix="vaultvec-nginx-")
    nginx = None
    driver = None
    try:
        conf = nginx_config(work, port, setup)
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        subprocess.run([nginx_bin, "-t", "-q", "-p", work, "-c", conf], check=True)
        # nginx daemonizes once its sockets listen: when this returns, the unix socket is there
        # (nothing polls for readiness).
        subprocess.run([nginx_bin, "-p", work, "-c", conf], check=True)
        nginx = (nginx_bin, conf)
        relay(listener, os.path.join(work, "https.sock"))
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--ignore-certificate-errors", "--window-size=1280,1000",
                    "--no-proxy-server", "--no-first-run", "--disable-sync",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-default-apps", "--disable-domain-reliability"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
        driver = webdriver.Chrome(options=options, service=service)
        ca = ssl.create_default_context(cafile=setup["ca"])
        flow = Flow(driver, f"https://localhost:{port}", setup, ca)
        try:
            result = flow.run()
        except Exception:
            flow.shot("failure")
            raise
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        if driver is not None:
            driver.quit()
        if nginx is not None:
            subprocess.run([nginx[0], "-p", work, "-c", nginx[1], "-s", "stop"], check=False)
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
