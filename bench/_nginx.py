"""A real nginx in front of the test's web servers, configured with the ``location`` blocks that
docs/operations.md documents ("Live streams behind a proxy"), read from that file: the documented
configuration is the tested one.

The distribution's ``nginx`` (``.ci/run`` installs it) runs in the foreground with everything it
writes in a directory of its own; its workers run as ``nobody`` when started as root.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from bench._servers import binary, free_port, stop_process, wait_listening

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the repository




def documented_locations() -> str:
    """The nginx block of docs/operations.md's "Live streams behind a proxy" section."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Live streams behind a proxy", 1)[1]
    match = re.search(r"```nginx\n(.*?)```", section, re.S)
    if match is None:
        raise RuntimeError("docs/operations.md has no nginx block under 'Live streams behind a proxy'")
    return match.group(1)




class Nginx:
    """nginx on 127.0.0.1 (``url``) balancing over ``upstreams`` (``host:port`` each)."""

    def __init__(self, upstreams: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tempfile.mkdtemp(prefix="wabot-nginx-")
        os.chmod(self.dir, 0o777)
        d = self.dir
        servers = "".join(f"        server {u};\n" for u in upstreams)
        conf = (
            f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n"
            f"    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
            f"    upstream wabot_web {{\n{servers}    }}\n"
            f"    server {{\n        listen 127.0.0.1:{self.port};\n{documented_locations()}    }}\n"
            "}\n"
        )
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        nginx = binary("nginx", "nginx-light")
        self.process = subprocess.Popen([nginx, "-p", d, "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_listening(self.process, self.port, "nginx")

    def error_log(self) -> str:
        try:
            return pathlib.Path(self.dir, "error.log").read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)
