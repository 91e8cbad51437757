"""A local Google Cloud Storage emulator, so gs:// paths are tested for real, not mocked.

`gcp-storage-emulator` (a dev dependency) serves the GCS JSON API on a free port, keeping objects
in a directory of its own. `env(url)` points every GCS client in the stack at it: gcsfs and
google-cloud-storage (`STORAGE_EMULATOR_HOST`), tensorstore, which writes Orbax's arrays
(`TENSORSTORE_GCS_HTTP_URL`, with a dummy token), and array_record's C++ reader, which reads TFDS
data (`CLOUD_STORAGE_EMULATOR_ENDPOINT`). gcsfs's zonal-bucket probe is switched off: it would
wait 60 s for a gRPC endpoint the emulator does not have.

The emulator answers downloads without the `x-goog-generation` header that GCS always sends;
tensorstore keeps the generation of each object it reads and a later conditional read of an OCDBT
manifest then fails ("Malformed StorageGeneration"). `_LAUNCH` adds the header (the object's own
generation, as GCS sends it) before the server starts; nothing else of the emulator is changed.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "mmfm-test"


def env(url: str) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


_LAUNCH = """
import sys
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # not found: the original handler has answered 404
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


objects.download = download  # before the server module builds its handler table from it
from gcp_storage_emulator.__main__ import main

main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(store_dir: str):
    """Starts the emulator (objects kept under `store_dir`) with bucket BUCKET; yields its URL."""
    port = _free_port()
    # Its log goes to a file: a pipe nobody reads fills up and blocks the server mid-request.
    log = open(os.path.join(os.path.dirname(os.path.abspath(store_dir)), f"gcs-emulator-{port}.log"), "w+")
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, "-d", store_dir, "start", "--host", "127.0.0.1", "--port",
                             str(port), "--default-bucket", BUCKET, "-q"],
                            stdout=log, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"GCS emulator did not start: {log.read()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
