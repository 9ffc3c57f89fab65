"""A web page in headless Chromium (Debian's chromium) calls dhtd's routing API from
another origin and shows the providers of a CID: CORS works as a browser enforces it.

The page is served from one origin (a static server on 127.0.0.1), the API from
another (dhtd's --routing-http-addr, another port: another origin). The page fetches
/routing/v1/providers/{cid} with ``Accept: application/x-ndjson`` (a header that
needs a preflight) and writes each provider's ID into the document. Chromium's
final DOM must hold dhtd's peer ID; a screenshot is kept as evidence
(TEST_SCREENSHOT_DIR, else the test's temp dir).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dht.v1 import dht_pb2 as pb
from tests.integration.test_swarm import cid_for
from tests.swarm import dev_node

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None,
                       reason="chromium is not installed: scripts/test-tools.d/46-chromium"),
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>providers</title></head>
<body>
<h1>Providers of <code id="cid">{cid}</code></h1>
<ul id="providers"></ul>
<p id="status">asking…</p>
<script>
(async () => {{
  const status = document.getElementById('status')
  try {{
    const answer = await fetch('{api}/routing/v1/providers/{cid}',
                               {{ headers: {{ Accept: 'application/x-ndjson' }} }})
    const text = await answer.text()
    for (const line of text.split('\\n').filter(Boolean)) {{
      const item = document.createElement('li')
      item.textContent = JSON.parse(line).ID
      document.getElementById('providers').append(item)
    }}
    status.textContent = 'done: ' + answer.status + ' ' + answer.headers.get('content-type')
  }} catch (err) {{
    status.textContent = 'failed: ' + err
  }}
}})()
</script>
</body></html>
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    root = tmp_path / "site"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_page_on_another_origin_lists_the_providers(tmp_path: Path,
                                                      site: tuple[Path, int]) -> None:
    root, port = site
    cid = cid_for("browser page")
    with dev_node("browser", tmp_path / "d", ["--routing-http-addr", "127.0.0.1:0"]) as node:
        list(node.dht.Provide(pb.ProvideRequest(cids=[cid]), timeout=30))
        api = f"http://{node.info['routing_http_addr']}"
        (root / "index.html").write_text(PAGE.format(cid=cid, api=api))
        page = f"http://127.0.0.1:{port}/index.html"
        shots = Path(os.environ.get("TEST_SCREENSHOT_DIR", str(tmp_path)))
        shots.mkdir(parents=True, exist_ok=True)
        common = [CHROMIUM or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                  "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                  "--virtual-time-budget=15000"]
        dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True,
                             timeout=120, check=False)
        subprocess.run([*common, f"--screenshot={shots / 'routing-http-cors.png'}",
                        "--window-size=1000,400", page], capture_output=True, timeout=120,
                       check=False)
    assert f"<li>{node.peer_id}</li>" in dom.stdout, (dom.stdout[-2000:], dom.stderr[-2000:])
    assert "done: 200 application/x-ndjson" in dom.stdout
    assert (shots / "routing-http-cors.png").stat().st_size > 0
