"""A platform-free smoke test of an installed wheel (used by wheels.yml on macOS and
Windows): commit a file, list it, read it back verified, through the API and fsspec."""

import os
import tempfile

import fsspec

import blockframe

with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "data.bin")
    payload = os.urandom(3_000_000)
    with open(src, "wb") as f:
        f.write(payload)
    root = os.path.join(tmp, "archive")
    with blockframe.open_archive(root) as archive:
        archive.commit(src)
        assert [i.name for i in archive.list()] == ["data.bin"]
        with archive.open("data.bin") as f:
            assert f.read() == payload
        assert archive.health().status == "healthy"
    fs = fsspec.filesystem("blockframe", archive=root)
    assert fs.cat_file("data.bin", 10, 20) == payload[10:20]
print("smoke test passed:", blockframe.__file__)
