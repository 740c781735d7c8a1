"""Parallel tool calls: one answer with 4 independent `open` calls, run at once by the agent
loop vs one after another, over the demo web served with a per-request latency (a real web
page takes 100s of ms; loopback takes ~1).

    python bench/agent.py [--latency 0.3] [--calls 4]
"""

from __future__ import annotations

import argparse
import http.server
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from llmos.agent.browser import Site, demo_web


def slow_server(root: Path, latency: float) -> tuple[str, http.server.ThreadingHTTPServer]:
    class Slow(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            time.sleep(latency)
            super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Slow, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/", server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.3, help="seconds each page takes to serve")
    ap.add_argument("--calls", type=int, default=4, help="independent open calls in one answer")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = demo_web(Path(tmp) / "web")
        site = Site(root)
        url, server = slow_server(root, args.latency)
        open_ = site.tools()["open"]["fn"]
        pages = sorted(p.name for p in root.glob("*.html"))[: args.calls]
        calls = [{"url": url + p} for p in pages]
        t = time.perf_counter()
        for c in calls:
            open_(c)
        one_by_one = time.perf_counter() - t
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:  # as agent.py runs an answer's calls
            list(pool.map(open_, calls))
        at_once = time.perf_counter() - t
        server.shutdown()
        site.close()
    print(
        f"{args.calls} open calls, {args.latency:g} s latency each: one after another "
        f"{one_by_one:.2f} s, at once {at_once:.2f} s: {one_by_one / at_once:.1f}x"
    )


if __name__ == "__main__":
    main()
