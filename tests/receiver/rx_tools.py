"""Third-party DICOM senders run for real: Debian's dcmtk storescu and a private Orthanc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rx_store import free_port


def storescu(
    tool: str,
    port: int,
    files: list[Path],
    calling: str = "DCMTKSCU",
    nodelay: bool = True,
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One storescu run = one association carrying every file given."""
    env = dict(os.environ)
    if nodelay:
        env["TCP_NODELAY"] = "1"  # Debian's dcmtk leaves Nagle on without it
    else:
        env.pop("TCP_NODELAY", None)
    command = [tool, "-aet", calling, "-aec", "STORESCP", *(extra or [])]
    command += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


class Orthanc:
    """A private Orthanc: own folder and HTTP port, loopback only, no DICOM listener."""

    def __init__(self, binary: str, folder: Path, receiver_port: int) -> None:
        self.binary = binary
        self.folder = folder
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.receiver_port = receiver_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "seriesflow-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "DicomAet": "ORTHANC",
            "DicomModalities": {"seriesflow": ["STORESCP", "127.0.0.1", self.receiver_port]},
            "Plugins": [],
            "StableAge": 1,
        }
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            [self.binary, str(config_path)], stdout=log, stderr=log, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError((self.folder / "orthanc.log").read_text()[-2000:])
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise TimeoutError("Orthanc did not answer on its HTTP port")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def post(self, path: str, body: bytes, timeout: float = 120) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())

    def upload(self, path: Path) -> dict[str, Any]:
        answer: dict[str, Any] = self.post("/instances", path.read_bytes())
        return answer

    def forward_study(self, study_id: str) -> Any:
        """C-STORE a whole study to the receiver; Orthanc answers when the job is done."""
        body = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
        return self.post("/modalities/seriesflow/store", body)
